//! The training loop (the paper's Algorithm 2): k discriminator steps per generator step, with
//! WGAN-GP, Adam, data batches read lazily on a background thread, metrics, checkpoints and an
//! exact resume.
//!
//! Reproducibility: every random draw of step `s` comes from streams of `(seed, s)`: poses,
//! CTF rows and data indices from the physics crate's named streams, and libtorch's generator
//! (noise, α, ε) re-seeded from `(seed, s)` at the start of the step. A checkpoint therefore
//! needs only the weights, the optimiser state and the step to continue exactly.

use mcg_physics::rng::{Purpose, stream};
use ndarray::Array3;
use rand::Rng;
use tch::{Device, Kind, Tensor, nn};

use crate::TrainError;
use crate::adam::Adam;
pub use crate::data::{DataPhysics, Prefetcher, estimate_noise_sigma};
use crate::forward::ForwardModel;
pub use crate::losses::CriticLosses;
use crate::losses::{StepLosses, fused_discriminator_loss, weighted_mean};
use crate::losses::{discriminator_loss, generator_loss};
use crate::models::{Architecture, Discriminator, Generator};
pub use crate::settings::{RETIRED, RETIRED_TAG, StepKind, TrainConfig};
use crate::simulate::low_pass;
pub use mcg_runfiles::StepMetrics;

/// A Multi-CryoGAN (or CryoGAN) model being trained.
#[derive(Debug)]
pub struct Trainer {
    /// The configuration.
    pub config: TrainConfig,
    pub(crate) vs: nn::VarStore,
    pub(crate) g: Generator,
    pub(crate) d: Discriminator,
    pub(crate) opt_g: Adam,
    pub(crate) opt_d: Adam,
    pub(crate) forward: ForwardModel,
    pub(crate) device: Device,
    pub(crate) step: u64,
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
        let mut g = Generator::new(&(vs.root() / "g"), &config.model);
        let d = Discriminator::new(&(vs.root() / "d"), &config.model);
        // Fixed probabilities are set once and left out of G's optimiser.
        let mut g_vars = trainable(&vs, "g.");
        if let Some(pi) = &config.fixed_pi {
            let pi: Vec<f32> = pi.iter().map(|&p| p as f32).collect();
            g.set_probabilities(&Tensor::from_slice(&pi).to_device(device));
            g_vars.retain(|(name, _)| !name.ends_with("logits"));
        }
        let opt_g = Adam::new(g_vars, config.lr_g, config.beta1, config.beta2);
        let opt_d = Adam::new(
            trainable(&vs, "d."),
            config.lr_d,
            config.beta1,
            config.beta2,
        );
        let forward = ForwardModel::new(config.model.box_size, device);
        Ok(Self {
            config,
            vs,
            g,
            d,
            opt_g,
            opt_d,
            forward,
            device,
            step: 0,
        })
    }

    /// Starts G from maps `[K][N][N][N]` (see [`Generator::init_volumes`]).
    pub fn init_volumes(&mut self, volumes: &Tensor) -> Result<(), TrainError> {
        self.g
            .init_volumes(&volumes.to_device(self.device))
            .map_err(TrainError::Invalid)
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

    /// One critic step with G frozen (the critic probe, [`crate::probe`]): D learns to tell
    /// the data from G's volumes as they are, and G does not move. Returns D's Wasserstein
    /// estimate, E[D(real)] − E[D(fake)], before the step.
    pub fn critic_step(
        &mut self,
        data: &DataPhysics,
        real: &mut dyn FnMut() -> Result<Array3<f32>, TrainError>,
    ) -> Result<f64, TrainError> {
        let s = self.step;
        tch::manual_seed(torch_seed(self.config.seed, 5, s));
        let pack = self.config.model.pack as i64;
        let real = to_tensor(&real()?, self.device);
        let fake = tch::no_grad(|| {
            let fixed = self.prepare(true);
            self.simulate_prepared(&fixed, data, s, 0.0)
        });
        let eps = Tensor::rand([real.size()[0] / pack], (Kind::Float, self.device));
        self.opt_d.zero_grad();
        let losses = fused_discriminator_loss(
            &self.d,
            &real,
            &fake.images,
            fake.weights.as_ref(),
            &eps,
            self.config.gp_lambda,
        );
        losses.loss.backward();
        self.opt_d.step();
        self.step += 1;
        Ok(losses.wasserstein.double_value(&[]))
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
        // The warm start: the voxel and mixture generators give their base volume alone.
        let heterogeneous = s >= self.config.warm_steps;
        let pack = self.config.model.pack as i64;
        // G once, without gradient: the k D steps see its volumes at fresh poses.
        let fixed = tch::no_grad(|| self.prepare(heterogeneous));
        let mut critic = None;
        for j in 0..k {
            let real = low_pass(&to_tensor(&real()?, self.device), blur);
            let fake = tch::no_grad(|| self.simulate_prepared(&fixed, data, s * (k + 1) + j, blur));
            let eps = Tensor::rand([real.size()[0] / pack], (Kind::Float, self.device));
            self.opt_d.zero_grad();
            let losses = fused_discriminator_loss(
                &self.d,
                &real,
                &fake.images,
                fake.weights.as_ref(),
                &eps,
                self.config.gp_lambda,
            );
            losses.loss.backward();
            self.opt_d.step();
            critic = Some(losses.detach());
        }
        // The G step: D's weights need no gradient.
        let frozen = trainable(&self.vs, "d.");
        for (_, t) in &frozen {
            let _ = t.set_requires_grad(false);
        }
        let prepared = self.prepare(heterogeneous);
        let fake = self.simulate_prepared(&prepared, data, s * (k + 1) + k, blur);
        let scores = self.d.score(&fake.images);
        self.opt_g.zero_grad();
        let g_loss = -weighted_mean(&scores, fake.weights.as_ref(), pack);
        g_loss.backward();
        for (_, t) in &frozen {
            let _ = t.set_requires_grad(true);
        }
        self.opt_g.step();
        self.g.project_constraints();
        self.step += 1;
        let mixture = self.config.model.architecture() == Architecture::Mixture;
        let losses = StepLosses {
            critic: critic.expect("k ≥ 1"),
            g_loss: g_loss.detach(),
            probabilities: mixture.then(|| self.g.probabilities().detach()),
        };
        self.metrics(losses, start)
    }

    /// A step's metrics from its losses on the device, read back in one transfer.
    fn metrics(
        &self,
        losses: StepLosses,
        start: std::time::Instant,
    ) -> Result<StepMetrics, TrainError> {
        let values = losses.read()?;
        let secs = start.elapsed().as_secs_f64();
        let images = self.config.batch_size as u64 * (self.config.d_steps as u64 + 1);
        Ok(StepMetrics {
            step: self.step,
            time: 0.0,
            d_loss: values.d_loss,
            g_loss: values.g_loss,
            wasserstein: values.wasserstein,
            gradient_penalty: values.gradient_penalty,
            images_per_second: images as f64 / secs,
            probabilities: values.probabilities,
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
        let mut critic = None;
        for j in 0..k {
            let real = to_tensor(&real()?, self.device);
            let fake = self.simulate(data, s * (k + 1) + j).detach();
            let eps = Tensor::rand([real.size()[0]], (Kind::Float, self.device));
            self.opt_d.zero_grad();
            let losses = discriminator_loss(&self.d, &real, &fake, &eps, self.config.gp_lambda);
            losses.loss.backward();
            self.opt_d.step();
            critic = Some(losses.detach());
        }
        let fake = self.simulate(data, s * (k + 1) + k);
        self.opt_g.zero_grad();
        self.opt_d.zero_grad();
        let g_loss = generator_loss(&self.d, &fake);
        g_loss.backward();
        self.opt_g.step();
        self.g.project_constraints();
        self.step += 1;
        let losses = StepLosses {
            critic: critic.expect("k ≥ 1"),
            g_loss: g_loss.detach(),
            probabilities: None,
        };
        self.metrics(losses, start)
    }
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
    use crate::models::{Mode, ModelConfig};
    use mcg_formats::ImageSource;
    use mcg_physics::Volume;
    use mcg_physics::normalize::Normalization;
    use mcg_physics::simulate::ImagingParams;
    use mcg_physics::simulate::{ProjectorKind, RandomImaging, Simulator};
    use mcg_physics::{Pose, Shift};
    use std::sync::Arc;

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
            t.draw_params(&data, 7, 4000)
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

    /// 64 clean images of [`truth`] at 5 Å (no CTF, no noise) and their physics, with two
    /// maps `[2][n][n][n]` to start a trainer from: the truth and another two-blob molecule.
    fn two_maps_and_images(n: usize) -> (Arc<dyn ImageSource>, DataPhysics, Tensor) {
        let vol = truth(n);
        let params: Vec<ImagingParams> = (0..64)
            .map(|i| RandomImaging::default().draw(5, i))
            .collect();
        let mut images = Array3::zeros((params.len(), n, n));
        Simulator::new(&vol, ProjectorKind::RealSpace).clean(&params, false, images.view_mut());
        let data = DataPhysics {
            particles: params,
            apix: 5.0,
            noise_sigma: 0.0,
            noise_patches: None,
            noise_filter: None,
        };
        let other = blobs(
            n,
            &[([0.0, 0.0, 0.0], 2.0, 1.0), ([-3.0, 1.0, 0.0], 1.5, 0.9)],
        );
        let maps: Vec<f32> = vol
            .data()
            .iter()
            .chain(other.data().iter())
            .copied()
            .collect();
        let maps = Tensor::from_slice(&maps).view([2, n as i64, n as i64, n as i64]);
        (Arc::new(Memory(images)), data, maps)
    }

    #[test]
    fn fixed_probabilities_stay_where_they_were_set() {
        let n = 16;
        let (source, data, maps) = two_maps_and_images(n);
        let config = |fixed_pi: Option<Vec<f64>>| TrainConfig {
            model: ModelConfig {
                mode: Mode::Multi,
                generator: crate::models::GeneratorKind::Mixture,
                components: 2,
                component_coarsening: 1,
                box_size: n,
                discriminator_channels: 8,
                pack: 2,
                ..ModelConfig::default()
            },
            batch_size: 16,
            poses_per_volume: 8,
            d_steps: 1,
            // A learning rate that moves learnt logits visibly within a few steps.
            lr_g: 0.05,
            ctf: false,
            warm_steps: 0,
            blur_start_px: 0.0,
            fixed_pi,
            seed: 4,
            ..TrainConfig::default()
        };
        let pi_after = |fixed_pi: Option<Vec<f64>>| {
            let mut trainer = Trainer::new(config(fixed_pi), Device::Cpu).unwrap();
            let feed = Prefetcher::start(source.clone(), 16, 4, 0);
            for _ in 0..10 {
                trainer.train_step(&data, &mut || feed.next()).unwrap();
            }
            Vec::<f64>::try_from(&trainer.generator().probabilities().to_kind(Kind::Double))
                .unwrap()
        };
        // Started from two maps with π held at ¼ / ¾, the components are the maps: α below
        // ¼ gives the first, above it the second.
        let mut trainer = Trainer::new(config(Some(vec![0.25, 0.75])), Device::Cpu).unwrap();
        trainer.init_volumes(&maps).unwrap();
        let got = trainer
            .generator()
            .volumes(&Tensor::from_slice(&[0.1f32, 0.9]));
        let mask = crate::models::sphere_mask(n as i64, Device::Cpu);
        let diff = f64::try_from((got - &maps * &mask).abs().max()).unwrap();
        let scale = f64::try_from(maps.abs().max()).unwrap();
        assert!(
            diff < 1e-5 * scale,
            "components differ from the maps by {diff}"
        );
        let fixed = pi_after(Some(vec![0.25, 0.75]));
        assert!(
            (fixed[0] - 0.25).abs() < 1e-6 && (fixed[1] - 0.75).abs() < 1e-6,
            "{fixed:?}"
        );
        // The same run with π learnt moves it from its start (½, ½): the oracle that the
        // steps above could have moved it.
        let learnt = pi_after(None);
        assert!((learnt[0] - 0.5).abs() > 1e-4, "{learnt:?}");
        // π for another number of components, or not summing to 1, is refused.
        for bad in [vec![1.0], vec![0.5, 0.6], vec![0.0, 1.0]] {
            let err = config(Some(bad.clone()))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("fixed_pi"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_held_path_starts_at_its_maps_trains_and_keeps_its_anchors_where_pi_put_them() {
        let n = 16;
        let (source, data, maps) = two_maps_and_images(n);
        let mut config = TrainConfig::path_held(vec![0.25, 0.75]);
        config.model.box_size = n;
        config.model.discriminator_channels = 8;
        config.model.pack = 2;
        config.batch_size = 16;
        config.poses_per_volume = 8;
        config.ctf = false;
        config.seed = 4;
        let mut trainer = Trainer::new(config.clone(), Device::Cpu).unwrap();
        trainer.init_volumes(&maps).unwrap();
        // The anchors sit at the centres of π's cells, ⅛ and ⅝, and are the maps there.
        let positions = trainer.generator().anchor_positions().unwrap();
        let at: Vec<f32> = positions.shallow_clone().try_into().unwrap();
        assert!(
            (at[0] - 0.125).abs() < 1e-6 && (at[1] - 0.625).abs() < 1e-6,
            "{at:?}"
        );
        let mask = crate::models::sphere_mask(n as i64, Device::Cpu);
        let got = trainer.generator().volumes(&positions);
        let diff = f64::try_from((&got - &maps * &mask).abs().max()).unwrap();
        assert!(
            diff < 1e-5 * f64::try_from(maps.abs().max()).unwrap(),
            "{diff}"
        );
        let feed = Prefetcher::start(source, 16, 4, 0);
        for _ in 0..5 {
            trainer.train_step(&data, &mut || feed.next()).unwrap();
        }
        // The anchors moved, their positions did not, and a checkpoint brings both back.
        let moved = trainer.generator().volumes(&positions);
        assert!(f64::try_from((&moved - &got).abs().max()).unwrap() > 0.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        trainer.save(&path).unwrap();
        let mut restored = Trainer::new(config, Device::Cpu).unwrap();
        restored.load(&path).unwrap();
        let again = restored.generator().volumes(&positions);
        assert_eq!(f64::try_from((&again - &moved).abs().max()).unwrap(), 0.0);
        let at_again: Vec<f32> = restored
            .generator()
            .anchor_positions()
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(at, at_again);
    }
}
