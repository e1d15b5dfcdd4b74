//! What a particle set gives the device physics: each particle's CTF and shift, the pixel size,
//! and the noise (white of σ, coloured, or background patches), on the device.

use mcg_formats::ParticleSet;
use mcg_physics::Pose;
use mcg_physics::noise::NoiseSpectrum;
use mcg_physics::simulate::ImagingParams;
use tch::{Device, Tensor};

/// What the data set gives the simulator: per-particle CTFs and shifts to draw from, and the
/// noise: white Gaussian of σ, or background patches.
#[derive(Debug)]
pub struct DataPhysics {
    /// Each particle's imaging parameters (pose ignored).
    pub particles: Vec<ImagingParams>,
    /// Pixel size, Å.
    pub apix: f64,
    /// Noise σ of the data (used when there are no noise patches).
    pub noise_sigma: f64,
    /// Background patches `[K][N][N]` on the training device (e.g. boxed from empty regions of
    /// the micrographs): each simulated image gets one, drawn at random, instead of white noise.
    pub noise_patches: Option<Tensor>,
    /// Coloured noise (when there are no noise patches): the amplitude filter √P of its power
    /// spectrum, `[N][N/2 + 1]` in `rfft2`'s layout on the training device, scaled to the
    /// pixel variance σ² ([`DataPhysics::with_spectrum`]); `None`: white noise of σ.
    pub noise_filter: Option<Tensor>,
}

impl DataPhysics {
    /// Coloured noise of `spectrum`'s shape and pixel variance σ² (σ = `noise_sigma`) on
    /// `device`, instead of white noise.
    pub fn with_spectrum(mut self, spectrum: &NoiseSpectrum, device: Device) -> Self {
        let n = spectrum.box_size() as i64;
        let scaled = spectrum.scaled_to_variance(self.noise_sigma * self.noise_sigma);
        let filter = Tensor::from_slice(&scaled.amplitude_filter())
            .view([n, n / 2 + 1])
            .to_device(device);
        self.noise_filter = Some(filter);
        self
    }

    /// From a particle set; σ is given (from a manifest or a flag).
    pub fn from_set(set: &ParticleSet, apix: f64, noise_sigma: f64) -> Self {
        let particles = set
            .particles
            .iter()
            .map(|p| ImagingParams {
                pose: Pose::default(),
                shift: p.shift,
                ctf: p.ctf,
            })
            .collect();
        Self {
            particles,
            apix,
            noise_sigma,
            noise_patches: None,
            noise_filter: None,
        }
    }
}
