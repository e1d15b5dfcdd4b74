//! The image-formation pipeline, fused: projection → shift → CTF → noise → normalisation.
//!
//! Shift and CTF act on the projection zero-padded to twice its size (conventions, "CTF"). The
//! Fourier-slice projector already delivers the padded projection's spectrum, so an image costs
//! one central slice, one phase ramp and CTF product, and one inverse FFT of size 2N. The
//! real-space projector takes the long way (project, pad, FFT) and exists to cross-check.
//!
//! Determinism: the noise of image `i` comes from the stream `(seed, Noise, i)` ([`bulk_stream`]), so a data set is
//! the same bit for bit whatever the batch size and the thread count. White noise (no
//! [`SimulationConfig::noise_spectrum`]) draws exactly what it drew before coloured noise
//! existed.

use ndarray::{Array2, ArrayViewMut2, ArrayViewMut3, Axis, s};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use serde::{Deserialize, Serialize};

use crate::ctf::CtfGrid;
use crate::fourier::Fft2;
use crate::noise::{ColouredNoise, NoiseSpectrum};
use crate::normalize::{Normalization, normalize};
use crate::project::{FourierProjector, project_real_space};
use crate::rng::{Purpose, bulk_stream, stream};
use crate::shift::translate_spectrum;
use crate::{CtfParams, PhysicsError, Pose, Shift, Volume, noise};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Images per parallel task: each task plans its own FFTs and buffers, which costs about as
/// much as forming a few images, so tasks must not be split finer than this.
const MIN_IMAGES_PER_TASK: usize = 32;

/// Which projector forms the images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectorKind {
    /// Central slice of the 2×-padded 3D transform (fast; the default).
    #[default]
    Fourier,
    /// Trilinear line integral through the rotated volume (slow; a cross-check).
    RealSpace,
}

impl std::str::FromStr for ProjectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fourier" => Ok(Self::Fourier),
            "real" | "real-space" => Ok(Self::RealSpace),
            other => Err(format!(
                "unknown projector {other:?}: expected fourier or real-space"
            )),
        }
    }
}

/// The imaging parameters of one particle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImagingParams {
    /// Orientation.
    pub pose: Pose,
    /// Origin offset (Å); the particle appears at box centre − shift.
    pub shift: Shift,
    /// CTF; ignored when the configuration turns the CTF off.
    pub ctf: CtfParams,
}

/// What the simulator applies after projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationConfig {
    /// Apply each particle's CTF.
    pub ctf: bool,
    /// Standard deviation of the Gaussian noise added to each pixel (its pixel standard
    /// deviation when coloured); `None` for clean images.
    pub noise_sigma: Option<f64>,
    /// The shape of the noise's power spectrum (coloured noise, scaled to pixel variance
    /// `noise_sigma²`); `None` for white noise. Its box must be the images'. Ignored for clean
    /// images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_spectrum: Option<NoiseSpectrum>,
    /// Per-image normalisation after noise.
    pub normalization: Normalization,
    /// Master seed of the noise streams.
    pub seed: u64,
}

impl SimulationConfig {
    /// Checks the configuration against `n × n` images: a noise spectrum of that box, a finite
    /// σ ≥ 0, a usable normalisation.
    pub fn validate(&self, n: usize) -> Result<(), PhysicsError> {
        if let Some(sigma) = self.noise_sigma
            && !(sigma.is_finite() && sigma >= 0.0)
        {
            return Err(PhysicsError::Parameter {
                name: "noise σ",
                value: sigma,
                expected: "a finite standard deviation ≥ 0",
            });
        }
        if let Some(spectrum) = &self.noise_spectrum
            && spectrum.box_size() != n
        {
            return Err(PhysicsError::Spectrum {
                field: "box_size".into(),
                problem: format!("{}: expected the images' box, {n}", spectrum.box_size()),
            });
        }
        self.normalization.validate(n)
    }

    /// The noise spectrum scaled to σ², when the noise is coloured (and σ > 0).
    fn scaled_spectrum(&self) -> Option<NoiseSpectrum> {
        let sigma = self.noise_sigma.filter(|&s| s > 0.0)?;
        Some(
            self.noise_spectrum
                .as_ref()?
                .scaled_to_variance(sigma * sigma),
        )
    }
}

/// How random imaging parameters are drawn for a synthetic data set: Haar-uniform poses,
/// non-astigmatic defocus uniform in a range, shifts uniform in a disc or Gaussian. The default is
/// the Hsp90 benchmark's (conventions): 1.0–2.0 µm, 300 kV, Cs 2.7 mm, Q0 0.1, no shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomImaging {
    /// Defocus range (min, max) in µm, uniform; ΔfU = ΔfV.
    pub defocus_um: (f64, f64),
    /// Acceleration voltage, kV.
    pub voltage: f64,
    /// Spherical aberration, mm.
    pub cs: f64,
    /// Amplitude contrast Q0.
    pub amplitude_contrast: f64,
    /// Largest shift, Å (uniform in the disc of this radius).
    pub max_shift: f64,
    /// Gaussian shifts instead: x and y independent, each of this standard deviation, Å, like
    /// the centring errors of a particle picker. Exclusive with `max_shift` (which must then
    /// be 0); `None` (the default) for the disc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_sigma: Option<f64>,
}

impl Default for RandomImaging {
    fn default() -> Self {
        Self {
            defocus_um: (1.0, 2.0),
            voltage: 300.0,
            cs: 2.7,
            amplitude_contrast: 0.1,
            max_shift: 0.0,
            shift_sigma: None,
        }
    }
}

impl RandomImaging {
    /// Checks the settings; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.defocus_um;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
            return Err(format!(
                "defocus range {lo}:{hi} µm: expected 0 ≤ min ≤ max"
            ));
        }
        if !(self.max_shift.is_finite() && self.max_shift >= 0.0) {
            return Err(format!("largest shift {} Å: expected ≥ 0", self.max_shift));
        }
        if let Some(sigma) = self.shift_sigma {
            if !(sigma.is_finite() && sigma >= 0.0) {
                return Err(format!("shift σ {sigma} Å: expected ≥ 0"));
            }
            if self.max_shift > 0.0 {
                return Err(format!(
                    "a shift σ ({sigma} Å) and a largest shift ({} Å): give one of them",
                    self.max_shift
                ));
            }
        }
        self.ctf_template().validate().map_err(|e| e.to_string())
    }

    fn ctf_template(&self) -> CtfParams {
        CtfParams {
            voltage: self.voltage,
            cs: self.cs,
            amplitude_contrast: self.amplitude_contrast,
            ..CtfParams::default()
        }
    }

    /// The parameters of image `index`: pose, defocus and shift each from their own stream
    /// `(seed, Pose | Ctf | Shift, index)`, so they do not depend on batching, threads, or how
    /// many images there are.
    pub fn draw(&self, seed: u64, index: u64) -> ImagingParams {
        let (lo_um, hi_um) = self.defocus_um;
        let pose = Pose::sample_uniform(&mut stream(seed, Purpose::Pose, index));
        let mut rng = stream(seed, Purpose::Ctf, index);
        let defocus = (lo_um + (hi_um - lo_um) * rng.random::<f64>()) * 1e4;
        let mut rng = stream(seed, Purpose::Shift, index);
        let shift = match self.shift_sigma {
            Some(sigma) => {
                let (x, y): (f64, f64) = (
                    StandardNormal.sample(&mut rng),
                    StandardNormal.sample(&mut rng),
                );
                Shift {
                    x: sigma * x,
                    y: sigma * y,
                }
            }
            None => {
                let r = self.max_shift * rng.random::<f64>().sqrt();
                let phi = rng.random::<f64>() * std::f64::consts::TAU;
                Shift {
                    x: r * phi.cos(),
                    y: r * phi.sin(),
                }
            }
        };
        ImagingParams {
            pose,
            shift,
            ctf: CtfParams {
                defocus_u: defocus,
                defocus_v: defocus,
                ..self.ctf_template()
            },
        }
    }
}

/// A source of projections for [`SlicePipeline`]: it writes the centred half-plane spectrum of
/// one image's `2N × 2N` zero-padded projection, in the layout of [`FourierProjector::slice`].
///
/// [`FourierProjector`] is one (a central slice of one volume); the synthetic-data crate's
/// rigid-body projector is another (one slice per body, per conformation).
pub trait SliceSource: Sync {
    /// Writes the padded spectrum of image `index` of the batch (its imaging parameters are
    /// `params`) into `spec` (`2N · (N + 1)` long). `scratch` is a spare buffer of the same
    /// length the source may use freely.
    fn slice_spectrum(
        &self,
        index: usize,
        params: &ImagingParams,
        spec: &mut [Complex32],
        scratch: &mut [Complex32],
    );
}

impl SliceSource for FourierProjector {
    fn slice_spectrum(
        &self,
        _index: usize,
        params: &ImagingParams,
        spec: &mut [Complex32],
        _scratch: &mut [Complex32],
    ) {
        self.slice(&params.pose, spec);
    }
}

/// The real-space projector as a [`SliceSource`]: line integral, zero padding, 2D FFT.
#[derive(Debug)]
struct RealSpaceSource {
    volume: Volume,
}

impl SliceSource for RealSpaceSource {
    fn slice_spectrum(
        &self,
        _index: usize,
        params: &ImagingParams,
        spec: &mut [Complex32],
        _scratch: &mut [Complex32],
    ) {
        let n = self.volume.box_size();
        let mut padded = Array2::<f32>::zeros((2 * n, 2 * n));
        {
            let mut projection = padded.slice_mut(s![n / 2..n / 2 + n, n / 2..n / 2 + n]);
            let mut one = projection.view_mut().insert_axis(Axis(0));
            project_real_space(
                &self.volume,
                std::slice::from_ref(&params.pose),
                one.view_mut(),
            );
        }
        Fft2::new(2 * n).forward(padded.view(), spec);
    }
}

/// The image-formation steps after projection (shift, CTF, inverse transform and crop, noise,
/// normalisation), for any [`SliceSource`] of `N × N` images of `apix` Å pixels.
#[derive(Debug)]
pub struct SlicePipeline {
    n: usize,
    apix: f64,
    ctf_grid: CtfGrid,
}

impl SlicePipeline {
    /// The pipeline for `n × n` images (`n` even, ≥ 2) of `apix` Å pixels.
    pub fn new(n: usize, apix: f64) -> Self {
        assert!(n >= 2 && n.is_multiple_of(2), "image size must be even");
        Self {
            n,
            apix,
            ctf_grid: CtfGrid::new(2 * n, apix),
        }
    }

    /// Image edge in pixels.
    pub fn box_size(&self) -> usize {
        self.n
    }

    /// Pixel size in Å.
    pub fn apix(&self) -> f64 {
        self.apix
    }

    /// Clean images (projection from `source`, shift, and the CTF when `ctf`) of `params`,
    /// into `out` (`[params.len()][N][N]`), in parallel.
    pub fn clean<S: SliceSource + ?Sized>(
        &self,
        source: &S,
        params: &[ImagingParams],
        ctf: bool,
        mut out: ArrayViewMut3<'_, f32>,
    ) {
        assert_eq!(out.dim(), (params.len(), self.n, self.n), "output shape");
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(params.par_iter())
            .enumerate()
            .with_min_len(MIN_IMAGES_PER_TASK)
            .for_each_init(
                || Workspace::new(self.n),
                |ws, (i, (image, p))| self.clean_one(source, i, p, ctf, ws, image),
            );
    }

    /// Finished images: clean images plus noise (image `first_index + i` draws its noise from
    /// its own stream `(seed, Noise, first_index + i)`) and normalisation, into `out`, in
    /// parallel. Panics if a noise spectrum's box is not the images' ([`SimulationConfig::validate`]).
    pub fn simulate<S: SliceSource + ?Sized>(
        &self,
        source: &S,
        params: &[ImagingParams],
        config: &SimulationConfig,
        first_index: u64,
        mut out: ArrayViewMut3<'_, f32>,
    ) {
        assert_eq!(out.dim(), (params.len(), self.n, self.n), "output shape");
        let spectrum = config.scaled_spectrum();
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(params.par_iter())
            .enumerate()
            .with_min_len(MIN_IMAGES_PER_TASK)
            .for_each_init(
                || {
                    (
                        Workspace::new(self.n),
                        NoiseSource::new(config, spectrum.as_ref()),
                    )
                },
                |(ws, noise), (i, (mut image, p))| {
                    self.clean_one(source, i, p, config.ctf, ws, image.view_mut());
                    noise.add(image.view_mut(), Purpose::Noise, first_index + i as u64);
                    normalize(image, &config.normalization);
                },
            );
    }

    /// Pure-noise images, like patches boxed from empty regions of a micrograph: the noise of
    /// `config` (image `first_index + i` from the stream `(seed, BackgroundNoise,
    /// first_index + i)`, independent of every particle's) and its normalisation, no particle,
    /// into `out` (`[K][N][N]`), in parallel.
    pub fn background(
        &self,
        config: &SimulationConfig,
        first_index: u64,
        mut out: ArrayViewMut3<'_, f32>,
    ) {
        assert_eq!((out.dim().1, out.dim().2), (self.n, self.n), "output shape");
        let spectrum = config.scaled_spectrum();
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .with_min_len(MIN_IMAGES_PER_TASK)
            .for_each_init(
                || NoiseSource::new(config, spectrum.as_ref()),
                |noise, (i, mut image)| {
                    image.fill(0.0);
                    noise.add(
                        image.view_mut(),
                        Purpose::BackgroundNoise,
                        first_index + i as u64,
                    );
                    normalize(image, &config.normalization);
                },
            );
    }

    /// The dataset-level signal variance `s²` (conventions, "Noise and SNR"): the whole-box
    /// variance of the clean images of `params`, averaged.
    pub fn signal_variance<S: SliceSource + ?Sized>(
        &self,
        source: &S,
        params: &[ImagingParams],
        ctf: bool,
    ) -> f64 {
        let mut images = ndarray::Array3::zeros((params.len(), self.n, self.n));
        self.clean(source, params, ctf, images.view_mut());
        // Variances in parallel, summed in image order: a parallel sum's grouping follows the
        // threads' work stealing, and its last bit would change σ from run to run.
        let variances: Vec<f64> = images
            .axis_iter(Axis(0))
            .into_par_iter()
            .map(|im| noise::image_variance(im))
            .collect();
        let total: f64 = variances.iter().sum();
        total / params.len().max(1) as f64
    }

    fn clean_one<S: SliceSource + ?Sized>(
        &self,
        source: &S,
        index: usize,
        p: &ImagingParams,
        ctf: bool,
        ws: &mut Workspace,
        mut image: ArrayViewMut2<'_, f32>,
    ) {
        let (n, m) = (self.n, 2 * self.n);
        source.slice_spectrum(index, p, &mut ws.spec, &mut ws.scratch);
        if p.shift.x != 0.0 || p.shift.y != 0.0 {
            let [tx, ty] = p.shift.simulation_translation(self.apix);
            translate_spectrum(&mut ws.spec, m, tx, ty);
        }
        if ctf {
            self.ctf_grid.evaluate(&p.ctf, &mut ws.ctf);
            for (z, c) in ws.spec.iter_mut().zip(&ws.ctf) {
                *z *= *c;
            }
        }
        ws.fft.inverse(&mut ws.spec, ws.padded.view_mut());
        image.assign(&ws.padded.slice(s![n / 2..n / 2 + n, n / 2..n / 2 + n]));
    }
}

/// The projector a [`Simulator`] was built with.
#[derive(Debug)]
enum Source {
    Fourier(FourierProjector),
    RealSpace(RealSpaceSource),
}

impl Source {
    fn as_dyn(&self) -> &dyn SliceSource {
        match self {
            Source::Fourier(p) => p,
            Source::RealSpace(r) => r,
        }
    }
}

/// Forms particle images of one volume: its projector and a [`SlicePipeline`].
#[derive(Debug)]
pub struct Simulator {
    source: Source,
    pipeline: SlicePipeline,
}

impl Simulator {
    /// Prepares the projector of `kind` for `volume` (for the Fourier projector this is the
    /// 2×-oversampled 3D transform: done once, shared by every image).
    pub fn new(volume: &Volume, kind: ProjectorKind) -> Self {
        Self::with_oversampling(volume, kind, 2).expect("oversampling 2 is valid")
    }

    /// Like [`Simulator::new`], with the Fourier projector's 3D spectrum oversampled
    /// `oversampling` times (even, ≥ 2; ignored by the real-space projector): 4 brings the
    /// projection error below 1 % at 2–8× the memory and preparation time
    /// ([`FourierProjector::with_oversampling`]).
    pub fn with_oversampling(
        volume: &Volume,
        kind: ProjectorKind,
        oversampling: usize,
    ) -> Result<Self, crate::PhysicsError> {
        let source = match kind {
            ProjectorKind::Fourier => {
                Source::Fourier(FourierProjector::with_oversampling(volume, oversampling)?)
            }
            ProjectorKind::RealSpace => Source::RealSpace(RealSpaceSource {
                volume: volume.clone(),
            }),
        };
        Ok(Self {
            source,
            pipeline: SlicePipeline::new(volume.box_size(), f64::from(volume.apix())),
        })
    }

    /// Image edge in pixels (the volume's box).
    pub fn box_size(&self) -> usize {
        self.pipeline.n
    }

    /// Pixel size in Å.
    pub fn apix(&self) -> f64 {
        self.pipeline.apix
    }

    /// Clean images (projection, shift, and the CTF when `ctf`) of `params`, into `out`
    /// (`[params.len()][N][N]`), in parallel.
    pub fn clean(&self, params: &[ImagingParams], ctf: bool, out: ArrayViewMut3<'_, f32>) {
        self.pipeline.clean(self.source.as_dyn(), params, ctf, out);
    }

    /// Finished images: clean images plus noise (image `first_index + i` draws its noise from
    /// its own stream) and normalisation, into `out`, in parallel.
    pub fn simulate(
        &self,
        params: &[ImagingParams],
        config: &SimulationConfig,
        first_index: u64,
        out: ArrayViewMut3<'_, f32>,
    ) {
        self.pipeline
            .simulate(self.source.as_dyn(), params, config, first_index, out);
    }

    /// The dataset-level signal variance `s²` (conventions, "Noise and SNR"): the whole-box
    /// variance of the clean images of `params`, averaged.
    pub fn signal_variance(&self, params: &[ImagingParams], ctf: bool) -> f64 {
        self.pipeline
            .signal_variance(self.source.as_dyn(), params, ctf)
    }
}

/// The noise a configuration adds, per thread.
enum NoiseSource {
    /// Clean images.
    Clean,
    /// White noise of this σ.
    White { seed: u64, sigma: f32 },
    /// Coloured noise (its filter scaled to σ²).
    Coloured {
        seed: u64,
        colour: Box<ColouredNoise>,
    },
}

impl NoiseSource {
    /// The noise of `config`; `spectrum` is its noise spectrum scaled to σ², when coloured.
    fn new(config: &SimulationConfig, spectrum: Option<&NoiseSpectrum>) -> Self {
        match (config.noise_sigma, spectrum) {
            (None, _) => Self::Clean,
            (Some(_), Some(spectrum)) => Self::Coloured {
                seed: config.seed,
                colour: Box::new(ColouredNoise::new(spectrum)),
            },
            (Some(sigma), None) => Self::White {
                seed: config.seed,
                sigma: sigma as f32,
            },
        }
    }

    /// Adds the noise of image `index`, drawn from the stream `(seed, purpose, index)`.
    fn add(&mut self, image: ArrayViewMut2<'_, f32>, purpose: Purpose, index: u64) {
        match self {
            Self::Clean => {}
            Self::White { seed, sigma } => {
                noise::add_white_noise(image, *sigma, &mut bulk_stream(*seed, purpose, index));
            }
            Self::Coloured { seed, colour } => {
                colour.add(image, &mut bulk_stream(*seed, purpose, index));
            }
        }
    }
}

/// Per-thread buffers of the pipeline.
struct Workspace {
    fft: Fft2,
    spec: Vec<Complex32>,
    scratch: Vec<Complex32>,
    ctf: Vec<f32>,
    padded: Array2<f32>,
}

impl Workspace {
    fn new(n: usize) -> Self {
        let fft = Fft2::new(2 * n);
        let len = fft.spectrum_len();
        Self {
            fft,
            spec: vec![Complex32::default(); len],
            scratch: vec![Complex32::default(); len],
            ctf: vec![0.0; len],
            padded: Array2::zeros((2 * n, 2 * n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctf::apply_ctf;
    use crate::rng::stream;
    use crate::shift::translate_images;
    use ndarray::{Array2, Array3};
    use rand::Rng;

    /// Relative tolerance between two f32 evaluations of the same exact computation.
    const FLOAT_ROUNDING: f64 = 1e-5;

    /// A band-limited, asymmetric volume: Gaussian blobs (σ 1.6–2.5 voxels) well inside the
    /// sphere of radius N/2.
    fn blobs(n: usize, apix: f32) -> Volume {
        blob_volume(
            n,
            apix,
            &[
                ([0.0, 0.0, 0.0], 1.0, 2.5),
                ([5.0, 1.0, -2.0], 0.8, 2.0),
                ([-3.0, 4.0, 2.0], 0.6, 1.8),
                ([-1.0, -5.0, 3.0], 0.9, 1.6),
            ],
        )
    }

    /// Broader blobs (σ 3–4 voxels) within 5 voxels of the centre.
    fn wide_blobs(n: usize, apix: f32) -> Volume {
        blob_volume(
            n,
            apix,
            &[
                ([0.0, 0.0, 0.0], 1.0, 4.0),
                ([4.0, 1.0, -2.0], 0.8, 3.5),
                ([-3.0, 3.0, 2.0], 0.6, 3.0),
                ([-1.0, -4.0, 3.0], 0.9, 3.2),
            ],
        )
    }

    /// Gaussian blobs `(centre relative to voxel N/2, amplitude, σ)` in voxel units.
    fn blob_volume(n: usize, apix: f32, blobs: &[([f64; 3], f64, f64)]) -> Volume {
        let blobs: Vec<crate::Blob> = blobs
            .iter()
            .map(|&(centre, amplitude, sigma)| crate::Blob {
                centre,
                amplitude,
                sigma,
            })
            .collect();
        Volume::gaussian_blobs(n, apix, &blobs).unwrap()
    }

    fn params(count: usize, seed: u64, max_shift_a: f64) -> Vec<ImagingParams> {
        (0..count as u64)
            .map(|i| {
                let mut rng = stream(seed, Purpose::Other(1), i);
                let d = rng.random_range(10_000.0..20_000.0);
                ImagingParams {
                    pose: Pose::sample_uniform(&mut rng),
                    shift: Shift {
                        x: rng.random_range(-max_shift_a..=max_shift_a),
                        y: rng.random_range(-max_shift_a..=max_shift_a),
                    },
                    ctf: CtfParams {
                        defocus_u: d,
                        defocus_v: d * 0.9,
                        defocus_angle: rng.random_range(0.0..180.0),
                        bfactor: 50.0,
                        ..CtfParams::default()
                    },
                }
            })
            .collect()
    }

    fn rel_err(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    }

    /// The norm of what the Fourier projector leaves outside the central N×N box of the
    /// 2N-padded projection (interpolation residue; the exact projection of these volumes is
    /// zero there), per pose.
    fn residue_outside_box(projector: &FourierProjector, poses: &[Pose]) -> Vec<f64> {
        let n = projector.box_size();
        let mut fft = Fft2::new(2 * n);
        let mut spec = vec![Complex32::default(); fft.spectrum_len()];
        let mut padded = Array2::zeros((2 * n, 2 * n));
        poses
            .iter()
            .map(|pose| {
                projector.slice(pose, &mut spec);
                fft.inverse(&mut spec, padded.view_mut());
                let total: f64 = padded.iter().map(|v| f64::from(*v).powi(2)).sum();
                let inside: f64 = padded
                    .slice(s![n / 2..n / 2 + n, n / 2..n / 2 + n])
                    .iter()
                    .map(|v| f64::from(*v).powi(2))
                    .sum();
                (total - inside).max(0.0).sqrt()
            })
            .collect()
    }

    fn norm(a: ndarray::ArrayView2<f32>) -> f64 {
        a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
    }

    /// The fused pipeline (CTF applied to the padded slice) against the composition of the
    /// public steps (project and crop, pad, CTF, crop). They differ only by the projector's
    /// residue outside the box, which the fused path filters and the composed path drops; the
    /// CTF has gain at most 1, so the difference is bounded by the residue's norm.
    #[test]
    fn fused_ctf_pipeline_equals_the_composed_steps_up_to_the_projector_residue() {
        let apix = 5.0;
        let ps = params(12, 3, 0.0);
        assert_fused_equals_steps(&ps, true, |steps| {
            let ctfs: Vec<CtfParams> = ps.iter().map(|p| p.ctf).collect();
            apply_ctf(steps, &ctfs, apix);
        });
    }

    /// Whole-pixel shifts are exact circular rolls in both paths, so the fused pipeline (roll on
    /// the padded image) and the composed steps (project, roll the N×N image) differ only by the
    /// projector's residue, for particles that stay clear of the box edge.
    #[test]
    fn fused_shift_equals_the_composed_steps_up_to_the_projector_residue() {
        let apix = 5.0;
        let mut ps = params(12, 3, 0.0);
        for (i, p) in ps.iter_mut().enumerate() {
            // Origins of −2 … +2 pixels, in Å.
            p.shift = Shift {
                x: apix * ((i % 5) as f64 - 2.0),
                y: apix * ((i % 3) as f64 - 1.0),
            };
        }
        assert_fused_equals_steps(&ps, false, |steps| {
            let shifts: Vec<[f64; 2]> = ps
                .iter()
                .map(|p| p.shift.simulation_translation(apix))
                .collect();
            translate_images(steps, &shifts);
        });
    }

    /// Forms `ps` with the fused simulator (32³ blobs at 5 Å) and with the projector followed by
    /// `steps`, and checks each image pair differs by no more than the projector's residue.
    fn assert_fused_equals_steps(
        ps: &[ImagingParams],
        ctf: bool,
        steps: impl FnOnce(ArrayViewMut3<'_, f32>),
    ) {
        let (n, apix) = (32, 5.0);
        let volume = blobs(n, apix);
        let mut fused = Array3::zeros((ps.len(), n, n));
        Simulator::new(&volume, ProjectorKind::Fourier).clean(ps, ctf, fused.view_mut());

        let projector = FourierProjector::new(&volume);
        let poses: Vec<Pose> = ps.iter().map(|p| p.pose).collect();
        let mut composed = Array3::zeros((ps.len(), n, n));
        projector.project(&poses, composed.view_mut());
        steps(composed.view_mut());
        let residue = residue_outside_box(&projector, &poses);

        for i in 0..ps.len() {
            let (a, b) = (
                fused.index_axis(Axis(0), i),
                composed.index_axis(Axis(0), i),
            );
            let diff = norm((&a - &b).view());
            let bound = residue[i] + FLOAT_ROUNDING * norm(b);
            assert!(
                diff <= bound,
                "image {i}: |fused − steps| = {diff:.3e} > residue bound {bound:.3e}"
            );
        }
    }

    /// The real-space path is wired as project → pad → shift and CTF → crop: with no shift it
    /// must equal project_real_space followed by apply_ctf to float rounding.
    #[test]
    fn real_space_pipeline_equals_project_then_ctf() {
        let (n, apix) = (16, 5.0);
        let volume = blobs(n, apix);
        let ps = params(6, 8, 0.0);
        let mut fused = Array3::zeros((ps.len(), n, n));
        Simulator::new(&volume, ProjectorKind::RealSpace).clean(&ps, true, fused.view_mut());
        let poses: Vec<Pose> = ps.iter().map(|p| p.pose).collect();
        let mut steps = Array3::zeros((ps.len(), n, n));
        project_real_space(&volume, &poses, steps.view_mut());
        let ctfs: Vec<CtfParams> = ps.iter().map(|p| p.ctf).collect();
        apply_ctf(steps.view_mut(), &ctfs, f64::from(apix));
        for i in 0..ps.len() {
            let e = rel_err(fused.index_axis(Axis(0), i), steps.index_axis(Axis(0), i));
            assert!(e < FLOAT_ROUNDING, "image {i}: relative difference {e:.2e}");
        }
    }

    /// The two simulators form the same images (with shifts; no CTF, whose suppression of low
    /// frequencies would weigh the real-space projector's blur of fine detail), to the 1 % that
    /// holds the projectors to each other, for a band-limited volume (blobs of σ ≥ 3 voxels).
    #[test]
    fn fourier_and_real_space_simulators_agree_below_one_percent() {
        let (n, apix) = (32, 5.0);
        let volume = wide_blobs(n, apix);
        let ps = params(16, 4, 6.0);
        let mut a = Array3::zeros((ps.len(), n, n));
        let mut b = Array3::zeros((ps.len(), n, n));
        Simulator::with_oversampling(&volume, ProjectorKind::Fourier, 4)
            .unwrap()
            .clean(&ps, false, a.view_mut());
        Simulator::new(&volume, ProjectorKind::RealSpace).clean(&ps, false, b.view_mut());
        for i in 0..ps.len() {
            let e = rel_err(a.index_axis(Axis(0), i), b.index_axis(Axis(0), i));
            assert!(
                e < 0.01,
                "image {i}: Fourier vs real space differ by {e:.2e} of the norm"
            );
        }
    }

    #[test]
    fn odd_oversampling_is_refused() {
        let volume = blobs(8, 5.0);
        assert!(Simulator::with_oversampling(&volume, ProjectorKind::Fourier, 3).is_err());
    }

    #[test]
    fn same_seed_same_bits_whatever_batches_and_threads() {
        let (n, apix) = (16, 5.0);
        let volume = blobs(n, apix);
        let ps = params(10, 5, 5.0);
        let config = SimulationConfig {
            ctf: true,
            noise_sigma: Some(0.3),
            noise_spectrum: None,
            normalization: Normalization::None,
            seed: 42,
        };
        let sim = Simulator::new(&volume, ProjectorKind::Fourier);
        let run = |threads: usize, split: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = Array3::zeros((ps.len(), n, n));
            pool.install(|| {
                let (head, tail) = out.view_mut().split_at(Axis(0), split);
                sim.simulate(&ps[..split], &config, 0, head);
                sim.simulate(&ps[split..], &config, split as u64, tail);
            });
            out
        };
        let reference = run(1, 10);
        assert_eq!(
            reference,
            run(2, 3),
            "batching or threads changed the images"
        );
        assert_eq!(reference, run(2, 7));
        let other_seed = SimulationConfig {
            seed: 43,
            ..config.clone()
        };
        let mut different = Array3::zeros((ps.len(), n, n));
        sim.simulate(&ps, &other_seed, 0, different.view_mut());
        assert_ne!(reference, different, "the seed must matter");
    }

    /// σ comes from the signal variance; its last bit must not depend on the threads (a
    /// parallel sum's grouping follows their work stealing).
    #[test]
    fn signal_variance_is_the_same_bits_whatever_the_threads() {
        let (n, apix) = (16, 5.0);
        let volume = blobs(n, apix);
        let ps = params(300, 9, 5.0);
        let sim = Simulator::new(&volume, ProjectorKind::Fourier);
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sim.signal_variance(&ps, true))
        };
        let sequential: f64 = {
            let mut images = Array3::zeros((ps.len(), n, n));
            sim.pipeline
                .clean(sim.source.as_dyn(), &ps, true, images.view_mut());
            images
                .axis_iter(Axis(0))
                .map(|im| noise::image_variance(im))
                .sum::<f64>()
                / ps.len() as f64
        };
        for threads in [1, 2, 3, 8] {
            for _ in 0..5 {
                assert_eq!(
                    in_pool(threads).to_bits(),
                    sequential.to_bits(),
                    "{threads} threads"
                );
            }
        }
    }

    #[test]
    fn noise_has_the_requested_snr() {
        let (n, apix) = (32, 5.0);
        let volume = blobs(n, apix);
        let ps = params(400, 6, 0.0);
        let sim = Simulator::new(&volume, ProjectorKind::Fourier);
        let s2 = sim.signal_variance(&ps, true);
        let sigma = noise::sigma_for_snr_db(s2, -10.0);
        let config = SimulationConfig {
            ctf: true,
            noise_sigma: Some(sigma),
            noise_spectrum: None,
            normalization: Normalization::None,
            seed: 1,
        };
        let mut clean = Array3::zeros((ps.len(), n, n));
        let mut noisy = Array3::zeros((ps.len(), n, n));
        sim.clean(&ps, true, clean.view_mut());
        sim.simulate(&ps, &config, 0, noisy.view_mut());
        let diff = &noisy - &clean;
        let count = diff.len() as f64;
        let var = diff.iter().map(|d| f64::from(*d).powi(2)).sum::<f64>() / count;
        // The sample variance of `count` normal draws has relative std √(2/count).
        let tolerance = 4.0 * (2.0 / count).sqrt();
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < tolerance,
            "noise variance {var} vs σ² {}",
            sigma * sigma
        );
        let snr = s2 / var;
        assert!(
            (10.0 * snr.log10() + 10.0).abs() < 0.05,
            "SNR {} dB",
            10.0 * snr.log10()
        );
    }

    /// Coloured noise at an SNR: the added noise has pixel variance σ² (within 2 %: coloured
    /// pixels are correlated, so fewer independent samples than pixels) and the model's
    /// spectrum (within 10 % per shell up to Nyquist, 400 images of 32²: the estimator averages
    /// each shell over radii i ± ½, which on the steep low-frequency rise of shells 1–2 is a few
    /// per cent below the table's value at radius i; measured −7 % on shell 1, 2.3 % at most
    /// beyond shell 2).
    #[test]
    fn coloured_noise_has_the_requested_snr_and_spectrum() {
        let (n, apix) = (32, 5.0);
        let volume = blobs(n, apix);
        let ps = params(400, 6, 0.0);
        let sim = Simulator::new(&volume, ProjectorKind::Fourier);
        let s2 = sim.signal_variance(&ps, true);
        let sigma = noise::sigma_for_snr_db(s2, -20.0);
        let model = NoiseSpectrum::realistic(n, 1.0);
        let config = SimulationConfig {
            ctf: true,
            noise_sigma: Some(sigma),
            noise_spectrum: Some(model.clone()),
            normalization: Normalization::None,
            seed: 1,
        };
        config.validate(n).unwrap();
        let mut clean = Array3::zeros((ps.len(), n, n));
        let mut noisy = Array3::zeros((ps.len(), n, n));
        sim.clean(&ps, true, clean.view_mut());
        sim.simulate(&ps, &config, 0, noisy.view_mut());
        let diff = &noisy - &clean;
        let var = diff.iter().map(|d| f64::from(*d).powi(2)).sum::<f64>() / diff.len() as f64;
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.02,
            "noise variance {var} vs σ² {}",
            sigma * sigma
        );
        assert!((10.0 * (s2 / var).log10() + 20.0).abs() < 0.1);
        let measured = NoiseSpectrum::estimate_background(diff.view(), 0.0).unwrap();
        let scale = sigma * sigma;
        for i in 1..=n / 2 {
            let (got, want) = (measured.power()[i] / scale, model.power()[i]);
            assert!(
                (got / want - 1.0).abs() < 0.10,
                "shell {i}: {got} vs {want}"
            );
        }
        // A spectrum of another box is refused.
        let wrong = SimulationConfig {
            noise_spectrum: Some(NoiseSpectrum::white(16, 1.0)),
            ..config
        };
        assert!(
            wrong
                .validate(n)
                .unwrap_err()
                .to_string()
                .contains("box_size")
        );
    }

    /// Background images: the configuration's noise and normalisation, no particle, from their
    /// own streams (not the particles'), the same bits whatever the threads.
    #[test]
    fn background_images_are_normalised_noise_of_their_own_streams() {
        let n = 16;
        let pipeline = SlicePipeline::new(n, 5.0);
        let config = SimulationConfig {
            ctf: true,
            noise_sigma: Some(2.0),
            noise_spectrum: Some(NoiseSpectrum::realistic(n, 1.0)),
            normalization: Normalization::Background { radius_px: None },
            seed: 3,
        };
        let make = |threads: usize, first: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = Array3::from_elem((40, n, n), 9.0f32);
            pool.install(|| pipeline.background(&config, first, out.view_mut()));
            out
        };
        let one = make(1, 0);
        assert_eq!(one, make(2, 0));
        assert_eq!(
            one.slice(s![10.., .., ..]),
            make(2, 10).slice(s![..30, .., ..])
        );
        let radius = config.normalization.background_radius(n).unwrap();
        for image in one.outer_iter() {
            let c = (n / 2) as f64;
            let outside: Vec<f64> = image
                .indexed_iter()
                .filter(|((y, x), _)| {
                    (*y as f64 - c).powi(2) + (*x as f64 - c).powi(2) > radius * radius
                })
                .map(|(_, &v)| f64::from(v))
                .collect();
            let mean = outside.iter().sum::<f64>() / outside.len() as f64;
            let var =
                outside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / outside.len() as f64;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
        }
        // Not the noise of the particles with the same indices.
        let mut particle_noise = Array3::from_elem((1, n, n), 0.0f32);
        NoiseSource::new(&config, config.scaled_spectrum().as_ref()).add(
            particle_noise.index_axis_mut(Axis(0), 0),
            Purpose::Noise,
            0,
        );
        normalize(
            particle_noise.index_axis_mut(Axis(0), 0),
            &config.normalization,
        );
        assert_ne!(
            particle_noise.index_axis(Axis(0), 0),
            one.index_axis(Axis(0), 0)
        );
    }

    #[test]
    fn gaussian_shifts_have_the_requested_sigma_and_exclude_the_disc() {
        let imaging = RandomImaging {
            shift_sigma: Some(10.0),
            ..RandomImaging::default()
        };
        imaging.validate().unwrap();
        let count = 4000;
        let shifts: Vec<f64> = (0..count)
            .flat_map(|i| {
                let s = imaging.draw(1, i).shift;
                [s.x, s.y]
            })
            .collect();
        let m = shifts.len() as f64;
        let mean = shifts.iter().sum::<f64>() / m;
        let sd = (shifts.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m).sqrt();
        // Standard errors: σ/√m for the mean, σ/√(2m) for the standard deviation.
        assert!(mean.abs() < 4.0 * 10.0 / m.sqrt(), "mean {mean}");
        assert!((sd / 10.0 - 1.0).abs() < 4.0 / (2.0 * m).sqrt(), "sd {sd}");
        // Poses and defoci are those of the default draws; only the shift changes.
        let plain = RandomImaging::default().draw(1, 5);
        let gaussian = imaging.draw(1, 5);
        assert_eq!((plain.pose, plain.ctf), (gaussian.pose, gaussian.ctf));
        let both = RandomImaging {
            max_shift: 3.0,
            ..imaging
        };
        assert!(both.validate().unwrap_err().contains("give one of them"));
        let negative = RandomImaging {
            shift_sigma: Some(-1.0),
            ..RandomImaging::default()
        };
        assert!(negative.validate().is_err());
        // The default is recorded as before: no shift_sigma field.
        let text = serde_json::to_string(&RandomImaging::default()).unwrap();
        assert!(!text.contains("shift_sigma"), "{text}");
        let text = serde_json::to_string(&imaging).unwrap();
        assert!(text.contains("\"shift_sigma\":10.0"), "{text}");
    }
}
