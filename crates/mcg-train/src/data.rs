//! The data plumbing of a run: the prepared data set (through `mcg_forward::prepare`, the one
//! preparation the trainer and the classification share) fitted to the run's settings, and
//! the prefetcher that reads random batches of real images on a background thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use mcg_dataset::monitor::Monitor;
use mcg_formats::{ImageSource, ParticleSet};
use mcg_physics::normalize::Normalization;
use mcg_physics::rng::{Purpose, stream};
use ndarray::Array3;
use rand::Rng;
use tch::Device;
use tracing::info;

use crate::TrainError;
use crate::run::RunData;
use crate::settings::TrainConfig;
pub use mcg_forward::data::DataPhysics;
pub use mcg_forward::prepare::{
    HalfSet, NoiseChoice, PrepareSettings, PreparedData, estimate_noise_sigma, prepare,
};

/// How a run's data are prepared: the preparation's settings (their normalisation and σ are
/// filled from the run's settings) and what the run decides from the data.
#[derive(Debug, Clone, Default)]
pub struct RunDataSettings {
    /// The preparation.
    pub prepare: PrepareSettings,
    /// The normalisation asked for (`None`: auto, the data's own for a fresh run, the run's
    /// recorded one when resuming).
    pub normalization: Option<Normalization>,
    /// Shift the simulated images by Gaussian offsets of this σ (pixels).
    pub shift_sigma: Option<f64>,
    /// Do not shift the simulated images.
    pub no_shifts: bool,
    /// Continuing a run: its settings are kept (box, normalisation, shifts).
    pub resume: bool,
    /// The settings came from a file (or the run): their box is kept, not the images'.
    pub fixed_box: bool,
}

/// Prepares the data of a run and fits `config` to them: the box (and the paper's latent cube)
/// of the images unless `fixed_box`, the normalisation, the shifts of a fresh run and σ; then
/// validates the settings.
pub fn prepare_run(
    config: &mut TrainConfig,
    settings: &RunDataSettings,
    device: Device,
    monitor: &dyn Monitor,
    before_reading: &dyn Fn(&ParticleSet) -> anyhow::Result<()>,
) -> anyhow::Result<RunData> {
    let mut prepare_settings = settings.prepare.clone();
    let fresh = !settings.resume;
    prepare_settings.detect_normalization = fresh && settings.normalization.is_none();
    // The flag's normalisation, a resumed run's own, or one a settings file names; else the
    // data's (found by inspection).
    prepare_settings.normalization = settings.normalization.or((settings.resume
        || config.normalization != Normalization::None)
        .then_some(config.normalization));
    prepare_settings.noise_sigma = config.noise_sigma;
    prepare_settings.box_multiple = 8;
    let prepared = prepare(&prepare_settings, device, monitor, before_reading)?;
    let n = prepared.description.box_size;
    if config.model.box_size != n {
        anyhow::ensure!(
            !settings.fixed_box,
            "{}: the images are {n}×{n} pixels but the settings say model.box_size = {}",
            settings.prepare.particles.display(),
            config.model.box_size
        );
        config.model.box_size = n;
        // The paper's latent cube is the volume's own size (32³ for 32³ volumes): G's volume
        // follows the images instead of being upsampled from 32³.
        config.model.latent_size = n;
    }
    config.normalization = prepared.normalization;
    info!(normalization = %config.normalization, "per-image normalisation of the real and simulated images");
    if fresh {
        choose_shifts(config, settings, prepared.has_shifts);
    }
    config.noise_sigma = Some(prepared.description.noise_sigma);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .map_err(|e| e.context("the training settings"))?;
    Ok(RunData {
        images: prepared.images,
        physics: prepared.physics,
        description: prepared.description,
    })
}

/// The simulated images' shifts of a fresh run: the Gaussian of `shift_sigma`, none with
/// `no_shifts`, else the data's when its metadata has any (or the settings' choice).
fn choose_shifts(config: &mut TrainConfig, settings: &RunDataSettings, data_has_shifts: bool) {
    if let Some(sigma) = settings.shift_sigma {
        config.shift_sigma_px = sigma;
        config.shifts = false;
    } else if settings.no_shifts {
        config.shifts = false;
        config.shift_sigma_px = 0.0;
    } else if config.shift_sigma_px == 0.0 {
        config.shifts |= data_has_shifts;
    }
    info!(
        data_shifts = config.shifts,
        shift_sigma_px = config.shift_sigma_px,
        "shifts of the simulated images"
    );
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
