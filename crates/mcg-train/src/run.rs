//! A training run's folder: `config.json` (written first), `metrics.jsonl` (one line per
//! logged G step), `checkpoint.safetensors` (every few minutes, at the end and on interrupt),
//! `volumes/alpha_0.00.mrc`, `alpha_0.50.mrc`, `alpha_1.00.mrc` (G at the latest checkpoint,
//! with a copy of each checkpoint's in `volumes/step_NNNNNNN/`) and `images/step_NNNNNNN.png`
//! (real images above simulated ones, at each checkpoint).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mcg_formats::ImageSource;
use mcg_physics::Volume;
use ndarray::{Array3, ArrayView2};
use serde_json::Value;
use tch::{Device, Tensor};

use crate::TrainError;
use crate::train::{DataPhysics, Prefetcher, StepMetrics, TrainConfig, Trainer};
pub use mcg_runfiles::{DataDescription, RUN_FILES, RunConfigFile, RunDir, read_metrics};

/// The data a run trains on.
pub struct RunData {
    /// The images.
    pub images: Arc<dyn ImageSource>,
    /// CTFs, shifts, pixel size and σ for the simulator.
    pub physics: DataPhysics,
    /// What `config.json` records of the data (the particles file, where σ came from).
    pub description: DataDescription,
}

impl std::fmt::Debug for RunData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunData")
            .field("images", &self.images.len())
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// How long to train and where.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Total G steps to reach (counting those of a resumed run).
    pub steps: Option<u64>,
    /// Wall-clock budget of this invocation, minutes.
    pub minutes: Option<f64>,
    /// Continue from `out/checkpoint.safetensors`.
    pub resume: bool,
    /// A fresh run (not `resume`) into a folder that holds another run's files: remove them
    /// first. Without it such a folder is refused, so that an old checkpoint is never lost
    /// by mistake and an old run's snapshots never mix with the new one's.
    pub force: bool,
    /// Where tensors live.
    pub device: Device,
    /// A fresh run's starting maps (`[K][N][N][N]`, the mixture's components or, with one map,
    /// the single or base volume), e.g. a known structure to refine from; empty: none.
    pub init_volumes: Vec<Volume>,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// G steps reached.
    pub step: u64,
    /// Whether it stopped because of an interrupt.
    pub interrupted: bool,
    /// Seconds this invocation trained.
    pub seconds: f64,
    /// Mean seconds per G step in this invocation.
    pub seconds_per_step: f64,
}

/// What a run tells its caller as it goes (a progress bar, a log, a test's record).
pub trait Reporter {
    /// After each generator step: the step reached, the step to reach (`RunOptions::steps`)
    /// and the step's metrics.
    fn step(&mut self, step: u64, target: Option<u64>, metrics: &StepMetrics);
}

/// Any `FnMut(step, target, metrics)` reports.
impl<F: FnMut(u64, Option<u64>, &StepMetrics)> Reporter for F {
    fn step(&mut self, step: u64, target: Option<u64>, metrics: &StepMetrics) {
        self(step, target, metrics)
    }
}

/// Trains (see the module notes), telling `reporter` of each step. `cancel` is the caller's
/// flag (set it from a signal handler or another thread): it is read between steps, and once
/// set the run stops after a checkpoint, with [`RunSummary::interrupted`].
pub fn run(
    config: TrainConfig,
    data: &RunData,
    opts: &RunOptions,
    reporter: &mut dyn Reporter,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<RunSummary, TrainError> {
    let io = |path: &Path, e: std::io::Error| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if opts.steps.is_none() && opts.minutes.is_none() {
        return Err(TrainError::Invalid("give --steps or --minutes".into()));
    }
    if !opts.resume {
        clear_or_refuse(&opts.out, opts.force)?;
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| io(&opts.out, e))?;
    let config_path = RunDir::new(&opts.out).config();
    let mut trainer = Trainer::new(config.clone(), opts.device)?;
    if opts.resume {
        let ckpt = RunDir::new(&opts.out).checkpoint();
        if !ckpt.is_file() {
            return Err(TrainError::Invalid(format!(
                "--resume: no checkpoint at {}",
                ckpt.display()
            )));
        }
        trainer.load(&ckpt)?;
    } else {
        if !opts.init_volumes.is_empty() {
            let n = config.model.box_size as i64;
            let mut flat = Vec::new();
            for v in &opts.init_volumes {
                if v.box_size() as i64 != n {
                    return Err(TrainError::Invalid(format!(
                        "a starting map of {}³ voxels, but the model's box is {n}",
                        v.box_size()
                    )));
                }
                flat.extend(v.data().iter().copied());
            }
            let k = opts.init_volumes.len() as i64;
            trainer.init_volumes(&Tensor::from_slice(&flat).view([k, n, n, n]))?;
        }
        let doc = RunConfigFile {
            software: concat!("multicryogan ", env!("CARGO_PKG_VERSION")).into(),
            train: serde_json::to_value(&config).expect("settings serialise"),
            data: data.description.clone(),
            device: format!("{:?}", opts.device),
        };
        write_atomic(
            &config_path,
            (serde_json::to_string_pretty(&doc).expect("json") + "\n").as_bytes(),
        )?;
        // A new run starts a new metrics file.
        let _ = std::fs::remove_file(RunDir::new(&opts.out).metrics());
    }
    let k = config.d_steps as u64;
    let feed = Prefetcher::start(
        Arc::clone(&data.images),
        config.batch_size,
        config.seed,
        trainer.step() * k,
    );
    let metrics_path = RunDir::new(&opts.out).metrics();
    // A resumed run's clock goes on from the checkpoint's, and lines logged after the checkpoint
    // (by a run killed before its next one) are dropped: they are about to be run again.
    let time_offset = if opts.resume {
        forget_after(&opts.out, trainer.step())?;
        metrics_up_to(&metrics_path, trainer.step())?
    } else {
        0.0
    };
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io(&metrics_path, e))?;
    let start = Instant::now();
    let first_step = trainer.step();
    let mut last_checkpoint = Instant::now();
    let mut was_interrupted = false;
    loop {
        if opts.steps.is_some_and(|s| trainer.step() >= s) {
            break;
        }
        if opts
            .minutes
            .is_some_and(|m| start.elapsed().as_secs_f64() >= m * 60.0)
        {
            break;
        }
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            was_interrupted = true;
            break;
        }
        let mut m = trainer.train_step(&data.physics, &mut || feed.next())?;
        m.time = time_offset + start.elapsed().as_secs_f64();
        if m.step.is_multiple_of(config.log_every as u64) {
            let line = serde_json::to_string(&m).expect("metrics serialise");
            writeln!(metrics, "{line}").map_err(|e| io(&metrics_path, e))?;
        }
        // Stop at the first non-finite loss, before it reaches a checkpoint: the last one
        // written (if any) is kept.
        let losses = [
            ("d_loss", m.d_loss),
            ("g_loss", m.g_loss),
            ("wasserstein", m.wasserstein),
            ("gradient_penalty", m.gradient_penalty),
        ];
        if let Some((name, value)) = losses.iter().find(|(_, v)| !v.is_finite()) {
            metrics.flush().map_err(|e| io(&metrics_path, e))?;
            let kept = if RunDir::new(&opts.out).checkpoint().is_file() {
                "the last checkpoint written before it is kept (continue with --resume once the \
                 cause is fixed)"
            } else {
                "no checkpoint was written"
            };
            return Err(TrainError::NonFinite {
                step: m.step,
                loss: name,
                value: *value,
                kept,
            });
        }
        reporter.step(m.step, opts.steps, &m);
        if last_checkpoint.elapsed().as_secs_f64() >= config.checkpoint_seconds {
            checkpoint(&trainer, data, &opts.out)?;
            last_checkpoint = Instant::now();
        }
    }
    metrics.flush().map_err(|e| io(&metrics_path, e))?;
    checkpoint(&trainer, data, &opts.out)?;
    let seconds = start.elapsed().as_secs_f64();
    let steps = (trainer.step() - first_step).max(1);
    Ok(RunSummary {
        step: trainer.step(),
        interrupted: was_interrupted,
        seconds,
        seconds_per_step: seconds / steps as f64,
    })
}

/// The training settings of a run's `config.json`, completing older files with the paper's
/// values ([`TrainConfig::from_run_json`]).
pub fn train_config(file: &RunConfigFile) -> Result<TrainConfig, serde_json::Error> {
    TrainConfig::from_run_json(file.train.clone())
}

/// The settings a resumed run in `out` goes on with: its `config.json`'s ([`train_config`]).
pub fn resumed_settings(out: &Path) -> anyhow::Result<TrainConfig> {
    use anyhow::Context;
    let dir = RunDir::new(out);
    let doc = dir.read_config().context("--resume")?;
    train_config(&doc).with_context(|| format!("{}: field train", dir.config().display()))
}

/// Whether the run in `out`, resumed, reads its images negated: as its `config.json` records.
/// `invert` (`--invert` given again) on a run trained without it is refused.
pub fn resumed_inversion(out: &Path, invert: bool) -> anyhow::Result<bool> {
    use anyhow::Context;
    let recorded = RunDir::new(out).read_config().context("--resume")?.data;
    anyhow::ensure!(
        !invert || recorded.inverted,
        "--invert: the run in {} was trained without it; resume without --invert",
        out.display()
    );
    Ok(recorded.inverted)
}

/// Reads the maps a fresh run starts from ([`RunOptions::init_volumes`]); errors name the map.
pub fn read_init_volumes(paths: &[PathBuf]) -> anyhow::Result<Vec<Volume>> {
    use anyhow::Context;
    paths
        .iter()
        .map(|path| {
            mcg_formats::mrc::read_volume(path, None)
                .with_context(|| format!("reading the starting map {}", path.display()))
        })
        .collect()
}

/// Checks, changing nothing, that a fresh run may go into `out`: refused when the folder
/// holds another run's files, unless `force`. A caller can run it before costly preparations;
/// [`run`] runs it again.
pub fn check_fresh_run_folder(out: &Path, force: bool) -> Result<(), TrainError> {
    let present = run_files_in(out);
    if !present.is_empty() && !force {
        return Err(TrainError::Invalid(format!(
            "{} already holds a run ({}): continue it with --resume, or start over with \
             --force (which removes those files)",
            out.display(),
            present.join(", ")
        )));
    }
    Ok(())
}

/// The run files present in `out`.
fn run_files_in(out: &Path) -> Vec<&'static str> {
    RUN_FILES
        .iter()
        .copied()
        .filter(|name| out.join(name).exists())
        .collect()
}

/// Removes a run's file or folder (with what it holds).
fn remove_path(path: &Path) -> Result<(), TrainError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Before a fresh run into `out`: refuses a folder holding another run's files, or with
/// `force` removes them (and only them).
fn clear_or_refuse(out: &Path, force: bool) -> Result<(), TrainError> {
    check_fresh_run_folder(out, force)?;
    let present = run_files_in(out);
    for name in present {
        remove_path(&out.join(name))?;
    }
    Ok(())
}

/// Keeps the lines of a metrics file up to `step` (rewriting it when some are dropped) and
/// returns the training time of the last one kept, 0 when there is none or no file.
fn metrics_up_to(path: &Path, step: u64) -> Result<f64, TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0.0);
    };
    let mut kept = String::new();
    let mut time = 0.0;
    let mut dropped = false;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            TrainError::Invalid(format!(
                "{}: a line that is not JSON ({e}): {line}",
                path.display()
            ))
        })?;
        if v["step"].as_u64().is_some_and(|s| s <= step) {
            time = v["time"].as_f64().unwrap_or(time);
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped = true;
        }
    }
    if dropped {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(time)
}

/// The checkpoint, the volume snapshots and an image grid.
/// Writes the snapshots of this step, then the checkpoint: a process killed part-way keeps the
/// previous checkpoint, and `--resume` drops the snapshots made after it ([`forget_after`]).
/// Rewrites a run's outputs (its volumes, image grid and checkpoint) from the checkpoint file
/// in `out`: after that file was replaced by an earlier state of the same run, the folder is
/// that state's again. Returns its step.
pub fn rewrite_outputs(out: &Path, data: &RunData, device: Device) -> Result<u64, TrainError> {
    let run = load_run(out, device)?;
    checkpoint(&run.trainer, data, out)?;
    Ok(run.trainer.step())
}

fn checkpoint(trainer: &Trainer, data: &RunData, out: &Path) -> Result<(), TrainError> {
    let run = RunDir::new(out);
    let volumes_dir = run.volumes();
    std::fs::create_dir_all(&volumes_dir).map_err(|e| TrainError::Io {
        path: volumes_dir.to_path_buf(),
        source: e,
    })?;
    // The latest snapshot, and a copy kept per checkpoint (for curves of quality against time).
    let history = run.snapshot(trainer.step());
    std::fs::create_dir_all(&history).map_err(|e| TrainError::Io {
        path: history.to_path_buf(),
        source: e,
    })?;
    let apix = data.physics.apix as f32;
    for alpha in [0.0f32, 0.5, 1.0] {
        let volume = volume_at(trainer, alpha, apix)?;
        for dir in [&volumes_dir, &history] {
            let path = dir.join(RunDir::volume_name(alpha));
            mcg_formats::mrc::write_volume(&path, &volume)?;
        }
    }
    let images_dir = run.images();
    std::fs::create_dir_all(&images_dir).map_err(|e| TrainError::Io {
        path: images_dir.to_path_buf(),
        source: e,
    })?;
    // The first images of the set, not a batch of the prefetcher, whose order the training
    // steps own (taking one here would change the batches after a resume).
    let count = 8.min(data.images.len());
    let n = data.images.box_size();
    let mut real = Array3::zeros((count, n, n));
    let indices: Vec<usize> = (0..count).collect();
    data.images.read_batch(&indices, real.view_mut())?;
    let fake = tch::no_grad(|| trainer.simulate(&data.physics, u64::MAX - trainer.step()));
    let fake = to_array3(&fake);
    let rows: Vec<Vec<ArrayView2<'_, f32>>> = [&real, &fake]
        .iter()
        .map(|s| {
            (0..count)
                .map(|i| s.index_axis(ndarray::Axis(0), i))
                .collect()
        })
        .collect();
    write_grid(&run.image_grid(trainer.step()), &rows, 4)?;
    trainer.save(&RunDir::new(out).checkpoint())
}

/// Before a resumed run goes on from the checkpoint of `step`: removes the snapshots of later
/// steps (`volumes/step_N`, `images/step_N.png`, written by a run killed before its next
/// checkpoint, possibly in part; they would be made again, maybe at other steps) and the
/// temporary files a killed process left in the run's folders.
fn forget_after(out: &Path, step: u64) -> Result<(), TrainError> {
    let later = |path: &Path| RunDir::step_of(path).is_some_and(|s| s > step);
    let run = RunDir::new(out);
    for dir in [run.volumes(), run.images()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                mcg_fsio::remove_stale(&path);
            }
            if !later(&path) {
                continue;
            }
            remove_path(&path)?;
        }
        mcg_fsio::remove_stale(&dir);
    }
    mcg_fsio::remove_stale(out);
    Ok(())
}

/// G's volume at latent position `alpha`, with voxel size `apix`.
pub fn volume_at(trainer: &Trainer, alpha: f32, apix: f32) -> Result<Volume, TrainError> {
    let v = tch::no_grad(|| {
        trainer
            .generator()
            .volumes(&Tensor::from_slice(&[alpha]).to_device(trainer.device()))
    });
    Ok(Volume::new(to_array3(&v.get(0)), apix)?)
}

/// A run folder's trained model, for sampling its landscape.
#[derive(Debug)]
pub struct TrainedRun {
    /// G and D at the checkpoint's step.
    pub trainer: Trainer,
    /// Voxel size of the training data, Å.
    pub apix: f64,
}

/// Loads `out/config.json` and `out/checkpoint.safetensors` onto `device`.
pub fn load_run(out: &Path, device: Device) -> Result<TrainedRun, TrainError> {
    let dir = RunDir::new(out);
    let config_path = dir.config();
    let bad = |what: String| TrainError::Invalid(format!("{}: {what}", config_path.display()));
    let doc = dir.read_config()?;
    let config = train_config(&doc).map_err(|e| bad(format!("field train: {e}")))?;
    let apix = doc.data.pixel_size;
    if !(apix.is_finite() && apix > 0.0) {
        return Err(bad(format!(
            "field data.pixel_size_A: found {apix}, expected a positive number"
        )));
    }
    let ckpt = RunDir::new(out).checkpoint();
    if !ckpt.is_file() {
        return Err(TrainError::Invalid(format!(
            "{}: no checkpoint (train first, or wait for the first checkpoint)",
            ckpt.display()
        )));
    }
    let mut trainer = Trainer::new(config, device)?;
    trainer.load(&ckpt)?;
    Ok(TrainedRun { trainer, apix })
}

fn to_array3(t: &Tensor) -> Array3<f32> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let size: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
    let data: Vec<f32> = t.flatten(0, -1).try_into().expect("float tensor");
    Array3::from_shape_vec((size[0], size[1], size[2]), data).expect("shape")
}

/// A grayscale PNG of image rows, each image scaled to its own min–max and enlarged `zoom`
/// times, with 2-pixel white gutters.
pub fn write_grid(
    path: &Path,
    rows: &[Vec<ArrayView2<'_, f32>>],
    zoom: usize,
) -> Result<(), TrainError> {
    let err = |m: String| TrainError::Invalid(format!("{}: {m}", path.display()));
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let n = rows.iter().flatten().next().map_or(0, |im| im.dim().0);
    let cell = n * zoom + 2;
    let (w, h) = (cols * cell + 2, rows.len() * cell + 2);
    let mut pixels = vec![255u8; w * h];
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            let (lo, hi) = image
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
            for ((y, x), &v) in image.indexed_iter() {
                let g = ((v - lo) * scale).round().clamp(0.0, 255.0) as u8;
                for dy in 0..zoom {
                    let py = 2 + r * cell + y * zoom + dy;
                    let start = py * w + 2 + c * cell + x * zoom;
                    pixels[start..start + zoom].fill(g);
                }
            }
        }
    }
    let staged = mcg_fsio::Staged::new(path).map_err(crate::train::fs_error)?;
    let file = staged.create().map_err(crate::train::fs_error)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))?;
    staged.commit().map_err(crate::train::fs_error)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    mcg_fsio::write_atomic(path, bytes).map_err(crate::train::fs_error)
}

#[cfg(test)]
mod tests {
    use super::{forget_after, metrics_up_to};

    /// `--resume` from the checkpoint of step 5 drops later snapshots (maps and image grids)
    /// and a killed process's temporary files, and keeps everything else.
    #[test]
    fn a_resume_forgets_the_snapshots_after_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for step in [3u64, 5, 6, 12] {
            let d = out.join(format!("volumes/step_{step:07}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("alpha_0.00.mrc"), "x").unwrap();
            std::fs::create_dir_all(out.join("images")).unwrap();
            std::fs::write(out.join(format!("images/step_{step:07}.png")), "x").unwrap();
        }
        std::fs::write(out.join("volumes/alpha_0.00.mrc"), "latest").unwrap();
        // A temporary file of a process that cannot run (Linux ids stop at 2^22).
        let stale = out.join("volumes/step_0000005").join(format!(
            ".mcgtmp-999999999-0-{}.alpha_1.00.mrc",
            "0".repeat(16)
        ));
        std::fs::write(&stale, "half").unwrap();
        forget_after(out, 5).unwrap();
        let names = |sub: &str| {
            let mut v: Vec<String> = std::fs::read_dir(out.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names("volumes"),
            ["alpha_0.00.mrc", "step_0000003", "step_0000005"]
        );
        assert_eq!(names("images"), ["step_0000003.png", "step_0000005.png"]);
        // (The stale file here carries another host tag than this machine's, so it is kept:
        // sweeping is tested in mcg-fsio.)
        assert!(stale.exists());
    }

    #[test]
    fn a_resumed_metrics_file_keeps_the_lines_up_to_the_checkpoint_and_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert_eq!(metrics_up_to(&path, 3).unwrap(), 0.0, "no file yet");
        let lines: String = (1..=5)
            .map(|s| format!("{{\"step\":{s},\"time\":{}.5}}\n", 10 * s))
            .collect();
        std::fs::write(&path, &lines).unwrap();
        assert_eq!(metrics_up_to(&path, 5).unwrap(), 50.5);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            lines,
            "nothing dropped"
        );
        assert_eq!(metrics_up_to(&path, 3).unwrap(), 30.5);
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept.lines().count(), 3);
        assert!(kept.ends_with("{\"step\":3,\"time\":30.5}\n"), "{kept}");
        std::fs::write(&path, "{\"step\":1}\nnot json\n").unwrap();
        let err = metrics_up_to(&path, 3).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl") && err.contains("not JSON"),
            "{err}"
        );
    }
}
