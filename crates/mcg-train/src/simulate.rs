//! The trainer's simulator: G's volumes through the run's projector (one value, [`Volumes`],
//! with one method that makes clean images), at random poses and the CTFs and shifts of random
//! data particles, with the data's noise and normalisation, and the coarse-to-fine low-pass.

use mcg_physics::rng::{Purpose, stream};
use mcg_physics::simulate::ImagingParams;
use mcg_physics::{Pose, Shift};
use rand::Rng;
use rand_distr::StandardNormal;
use tch::{Kind, Tensor};

use crate::data::DataPhysics;
use crate::forward::{BatchPhysics, ForwardModel, Projector};
use crate::train::Trainer;

/// Volumes ready for the run's projector: their padded 3D spectra (Fourier: every batch of
/// images of the same volumes shares them) or the volumes themselves (real space).
pub struct Volumes {
    projector: Projector,
    source: Tensor,
    count: i64,
}

impl Volumes {
    /// `volumes` `[V][N][N][N]` prepared for `projector`.
    pub fn new(forward: &ForwardModel, projector: Projector, volumes: Tensor) -> Self {
        let count = volumes.size()[0];
        let source = match projector {
            Projector::Fourier => forward.spectra(&volumes),
            Projector::RealSpace => volumes,
        };
        Self {
            projector,
            source,
            count,
        }
    }

    /// How many volumes.
    pub fn count(&self) -> i64 {
        self.count
    }

    /// Clean images `[V·ppv][N][N]`, `ppv` of each volume (volume after volume), under
    /// `physics` (one row per image).
    pub fn clean(&self, forward: &ForwardModel, physics: &BatchPhysics, ppv: i64) -> Tensor {
        match self.projector {
            Projector::Fourier => forward.clean_from_spectra(&self.source, physics, ppv),
            Projector::RealSpace => {
                let each = self.source.repeat_interleave_self_int(ppv, Some(0), None);
                forward.clean(&each, physics)
            }
        }
    }
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes")
            .field("projector", &self.projector)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Simulated images of a batch: volumes at random α, random poses, CTFs and shifts of
    /// random data particles, noise. Draws from `(seed, step, d_step)` streams and libtorch's
    /// generator.
    pub fn simulate(&self, data: &DataPhysics, tag: u64) -> Tensor {
        let cfg = &self.config;
        let volumes_n = (cfg.batch_size / cfg.poses_per_volume) as i64;
        let alphas = Tensor::rand([volumes_n], (Kind::Float, self.device));
        let volumes = Volumes::new(&self.forward, cfg.projector, self.g.volumes(&alphas));
        let clean = self.clean_images(&volumes, data, tag, cfg.batch_size);
        self.add_data_noise(&clean, data)
    }

    /// `count` clean images of `volumes` (volume after volume, `count / V` of each) at random
    /// poses with the CTFs and shifts of random data particles (streams of `tag`).
    pub(crate) fn clean_images(
        &self,
        volumes: &Volumes,
        data: &DataPhysics,
        tag: u64,
        count: usize,
    ) -> Tensor {
        let cfg = &self.config;
        let params = self.draw_params(data, tag, count);
        let physics =
            BatchPhysics::new(&params, cfg.model.box_size, data.apix, cfg.ctf, self.device);
        volumes.clean(&self.forward, &physics, count as i64 / volumes.count())
    }

    /// `count` random poses, with the CTFs (and shifts, or Gaussian offsets) of random data
    /// particles, from stream `(seed, Other(3), tag)`.
    pub(crate) fn draw_params(
        &self,
        data: &DataPhysics,
        tag: u64,
        count: usize,
    ) -> Vec<ImagingParams> {
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

    /// The Gaussian σ (pixels) of the coarse-to-fine low-pass at G step `s`.
    pub fn blur_at(&self, s: u64) -> f64 {
        let c = &self.config;
        if c.blur_start_px <= 0.0 || s >= c.blur_steps {
            return 0.0;
        }
        c.blur_start_px * (1.0 - s as f64 / c.blur_steps as f64)
    }

    /// G's volumes for one step, ready to project, with their importance weights.
    pub(crate) fn prepare(&self, heterogeneous: bool) -> Prepared {
        let cfg = &self.config;
        let draws = (cfg.batch_size / cfg.poses_per_volume) as i64;
        // A π held fixed is simulated in its proportions, without importance weights.
        let batch = if heterogeneous && cfg.fixed_pi.is_some() {
            self.g.stratified_batch(draws)
        } else {
            self.g.batch(draws, heterogeneous)
        };
        Prepared {
            volumes: Volumes::new(&self.forward, cfg.projector, batch.volumes),
            // Without feedback the GAN simulates the components in equal shares.
            weights: batch.weights.filter(|_| cfg.pi_feedback),
        }
    }

    /// A batch of simulated images of `prepared`'s volumes at fresh poses, CTFs, shifts and
    /// noise (streams of `tag`), low-passed by `blur`, in random order (so that PacGAN's packs
    /// mix volumes), with each image's importance weight.
    pub(crate) fn simulate_prepared(
        &self,
        prepared: &Prepared,
        data: &DataPhysics,
        tag: u64,
        blur: f64,
    ) -> Simulated {
        let cfg = &self.config;
        let b = cfg.batch_size as i64;
        let clean = self.clean_images(&prepared.volumes, data, tag, cfg.batch_size);
        let ppv = b / prepared.volumes.count();
        let weights = prepared
            .weights
            .as_ref()
            .map(|w| w.repeat_interleave_self_int(ppv, Some(0), None));
        let noisy = self.add_data_noise(&clean, data);
        let (images, weights) = if cfg.model.pack > 1 {
            let perm = Tensor::randperm(b, (Kind::Int64, self.device));
            (
                noisy.index_select(0, &perm),
                weights.map(|w| w.index_select(0, &perm)),
            )
        } else {
            (noisy, weights)
        };
        Simulated {
            images: low_pass(&images, blur),
            weights,
        }
    }

    /// Clean images made noisy as the data are (white noise of σ or background patches), then
    /// normalised as the data are ([`crate::settings::TrainConfig::normalization`]).
    pub(crate) fn add_data_noise(&self, clean: &Tensor, data: &DataPhysics) -> Tensor {
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
}

/// G's volumes of one step, ready to project (see [`Trainer::prepare`]).
pub(crate) struct Prepared {
    /// The distinct volumes.
    pub(crate) volumes: Volumes,
    /// Their importance weights, when they are the mixture's components.
    pub(crate) weights: Option<Tensor>,
}

/// A batch of simulated images with their importance weights.
pub(crate) struct Simulated {
    /// The images `[B][N][N]`.
    pub(crate) images: Tensor,
    /// Each image's importance weight `[B]`.
    pub(crate) weights: Option<Tensor>,
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
