//! A particle set made ready for the device physics, in one call: settings in, a prepared data
//! set out. The trainer (`mcg-train`, through the CLI's `train`, xtask and the report's tests)
//! and the classification prepare their data through [`prepare`], so that every consumer reads
//! the same images, with the same normalisation, noise and crop.
//!
//! In order: the particles and their images (every image read once for non-finite pixels),
//! the half split, the inspection (contrast; for a fresh run the data's normalisation), the
//! Fourier crop, the images read through the inversion and normalisation, the noise σ (the
//! settings', the manifest's, or estimated), the coloured noise's spectrum, the noise stack,
//! then [`DataPhysics`] and the [`DataDescription`] that `config.json` records.
//!
//! Errors are `anyhow` errors (this is an orchestrating call, like `mcg-dataset`'s) naming the
//! file, the field and what was expected; they name the CLI's flag where one sets the value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use mcg_dataset::hint::WithHint;
use mcg_dataset::input;
use mcg_dataset::inspect::{Contrast, DetectedNormalization};
use mcg_dataset::monitor::Monitor;
use mcg_formats::{ImageSource, ParticleSet};
use mcg_physics::noise::NoiseSpectrum;
use mcg_physics::normalize::Normalization;
use mcg_runfiles::DataDescription;
use ndarray::Array3;
use tch::Device;
use tracing::info;

use crate::data::DataPhysics;

/// What to prepare, and how (plain values; the CLI fills them from its flags).
#[derive(Debug, Clone, Default)]
pub struct PrepareSettings {
    /// The particle set (STAR + MRCS, `.cs` or the HDF5 container).
    pub particles: PathBuf,
    /// Where the image stacks and the pixel size are, when the metadata does not say.
    pub locate: input::Locate,
    /// Leave out the particles whose images hold a non-finite pixel (else they are an error).
    pub skip_non_finite: bool,
    /// One half of the particles, as [`mcg_dataset::halves::half_split`] splits them.
    pub half: Option<HalfSet>,
    /// Negate the images as they are read (dark particles on a light background).
    pub invert: bool,
    /// The per-image normalisation to apply; `None`: the one found by inspection when
    /// `detect_normalization`, else none.
    pub normalization: Option<Normalization>,
    /// Find the data's normalisation (a fresh run); recorded in the description whether or
    /// not it is applied.
    pub detect_normalization: bool,
    /// Fourier-crop the images to this box as they are read.
    pub downsample: Option<usize>,
    /// The simulated images' noise.
    pub noise: NoiseChoice,
    /// Radius (pixels) outside which [`NoiseChoice::Coloured`] measures the background;
    /// `None`: the normalisation's background radius, else 3/4 of half the box.
    pub noise_radius: Option<f64>,
    /// Background patches (an MRC stack) to add to the simulated images instead of noise.
    pub noise_stack: Option<PathBuf>,
    /// The noise σ, when the settings give it (else the manifest's, else estimated).
    pub noise_sigma: Option<f64>,
    /// The box the consumer needs a multiple of (the trainer's networks: 8), checked after the
    /// crop, before anything costly; 0 or 1: any.
    pub box_multiple: usize,
}

/// One half of a particle set (see [`PrepareSettings::half`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfSet {
    /// 0 or 1.
    pub index: usize,
    /// The seed of the split.
    pub seed: u64,
}

/// The simulated images' noise (see [`PrepareSettings::noise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseChoice {
    /// Coloured when the set's manifest records a spectrum, else white.
    #[default]
    Auto,
    /// White Gaussian noise of σ.
    White,
    /// Coloured: the manifest's spectrum, else one estimated from the particles' background.
    Coloured,
}

/// A prepared data set.
pub struct PreparedData {
    /// The particles (without those left out, of the half).
    pub set: ParticleSet,
    /// Their images as they are to be read: cropped, inverted and normalised.
    pub images: Arc<dyn ImageSource>,
    /// What the simulator draws from (CTFs, shifts, pixel size, noise), on the device.
    pub physics: DataPhysics,
    /// What `config.json` records of the data.
    pub description: DataDescription,
    /// The per-image normalisation the images are read through (and the simulated ones get).
    pub normalization: Normalization,
    /// The box the images had before the crop.
    pub original_box: usize,
    /// Whether any particle's metadata has a shift.
    pub has_shifts: bool,
}

impl std::fmt::Debug for PreparedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedData")
            .field("images", &self.images.len())
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Prepares the data set of `settings` for the device physics on `device` (see the module
/// notes). `before_reading` is called with the particle set before every image is read (a
/// caller's cheap refusals, e.g. an output that would overwrite an input).
pub fn prepare(
    settings: &PrepareSettings,
    device: Device,
    monitor: &dyn Monitor,
    before_reading: &dyn Fn(&ParticleSet) -> Result<()>,
) -> Result<PreparedData> {
    let path = &settings.particles;
    let (mut set, images) = input::particles(path, &settings.locate)?;
    ensure!(!set.is_empty(), "{}: no particles", path.display());
    before_reading(&set)?;
    let (images, skipped) = input::without_non_finite(
        path,
        &mut set,
        images,
        settings.skip_non_finite,
        "--skip-non-finite trains without them; or fix or remove those images",
        monitor,
    )?;
    let images = match settings.half {
        Some(half) => {
            ensure!(
                set.len() >= 2,
                "{}: --half-sets needs at least 2 particles",
                path.display()
            );
            let [a, b] = mcg_dataset::halves::half_split(set.len(), half.seed);
            input::subset(&mut set, images, if half.index == 0 { a } else { b })
        }
        None => images,
    };
    let look = inspect_images(settings, images.as_ref())?;
    let from = images.box_size();
    let downsampled_from = settings.downsample.map(|_| from);
    let images = match settings.downsample {
        Some(m) => {
            mcg_dataset::downsample::downsampled(&mut set, images, m).context("--downsample")?
        }
        None => images,
    };
    let n = images.box_size();
    let m = settings.box_multiple.max(1);
    if n < m || !n.is_multiple_of(m) {
        return Err(anyhow::anyhow!(
            "{}: the images are {n}×{n} pixels; the trainer needs a box that is a multiple of {m}",
            path.display()
        ))
        .with_hint(format!(
            "--downsample N (a multiple of {m}) Fourier-crops them as they are read"
        ));
    }
    let normalization = match (settings.normalization, &look.normalization) {
        (Some(given), _) => given,
        (None, Some(found)) => {
            mcg_dataset::inspect::scaled_normalization(&found.normalization, from, n)
        }
        (None, None) => Normalization::None,
    };
    let images: Box<dyn ImageSource> = Box::new(
        mcg_dataset::inspect::Adjusted::new(images, settings.invert, normalization)
            .map_err(|e| anyhow::anyhow!("--normalize {normalization}: {e}"))?,
    );
    let apix = images.pixel_size();
    let (mut sigma, mut sigma_source) = noise_sigma(settings, images.as_ref(), downsampled_from)?;
    let spectrum = coloured_noise(settings, normalization, images.as_ref(), downsampled_from)?;
    if let Some((spectrum, source)) = &spectrum {
        // The spectrum's own variance, unless the settings give σ.
        if settings.noise_sigma.is_none() {
            sigma = spectrum.variance().sqrt();
            sigma_source = source.clone();
        }
        info!(source = %source, "coloured noise");
    }
    info!(sigma, source = %sigma_source, "noise");
    let mut physics = DataPhysics::from_set(&set, apix, sigma);
    if let Some((spectrum, _)) = &spectrum {
        physics = physics.with_spectrum(spectrum, device);
    }
    if let Some(stack) = &settings.noise_stack {
        physics.noise_patches = Some(noise_patches(stack, n, device)?);
    }
    let has_shifts = set
        .particles
        .iter()
        .any(|p| p.shift.x != 0.0 || p.shift.y != 0.0);
    let description = DataDescription {
        particles: path.display().to_string(),
        images: set.len(),
        box_size: n,
        pixel_size: apix,
        noise_sigma: sigma,
        noise_sigma_source: sigma_source,
        noise_stack: settings
            .noise_stack
            .as_ref()
            .map(|p| p.display().to_string()),
        skipped_non_finite: skipped,
        downsampled_from,
        inverted: settings.invert,
        normalization_found: look.normalization.map(|d| d.to_string()),
        contrast_z: Some(look.contrast.z),
        noise_spectrum: spectrum
            .as_ref()
            .map(|(s, _)| s.scaled_to_variance(sigma * sigma)),
        half_set: settings.half.map(|h| (h.index + 1, h.seed)),
    };
    Ok(PreparedData {
        set,
        images: Arc::from(images),
        physics,
        description,
        normalization,
        original_box: from,
        has_shifts,
    })
}

/// What the images said of themselves.
struct Look {
    normalization: Option<DetectedNormalization>,
    contrast: Contrast,
}

/// Measures the contrast (warning when the set looks inverted and is not being inverted, or
/// looks bright and is) and, when asked, finds the data's normalisation, stating both.
fn inspect_images(settings: &PrepareSettings, images: &dyn ImageSource) -> Result<Look> {
    let path = &settings.particles;
    let what = || format!("inspecting {}", path.display());
    let inverted = settings.invert;
    let contrast = mcg_dataset::inspect::measure_contrast(images).with_context(what)?;
    info!(contrast = %contrast, inverted, "contrast");
    if contrast.looks_inverted() && !inverted {
        tracing::warn!(
            "{}: {contrast}; the reconstruction would come out hollow or negative: \
             train with --invert",
            path.display()
        );
    } else if contrast.looks_bright() && inverted {
        tracing::warn!(
            "{}: {contrast}, but --invert makes them dark: leave --invert out",
            path.display()
        );
    }
    let normalization = if settings.detect_normalization {
        let found = mcg_dataset::inspect::detect_normalization(images).with_context(what)?;
        info!(found = %found, "normalisation of the data");
        Some(found)
    } else {
        None
    };
    Ok(Look {
        normalization,
        contrast,
    })
}

/// The patches of a noise stack, checked against the image size, on the device.
fn noise_patches(path: &Path, n: usize, dev: Device) -> Result<tch::Tensor> {
    let data = mcg_formats::mrc::read(path)?.data;
    for (k, patch) in data.axis_iter(ndarray::Axis(0)).enumerate() {
        if let Some((y, x, v)) = mcg_formats::finite::first_non_finite(patch) {
            bail!(
                "{}: patch {}: found {v} at pixel (x {x}, y {y}), expected finite numbers",
                path.display(),
                k + 1
            );
        }
    }
    let (k, ny, nx) = data.dim();
    ensure!(
        ny == n && nx == n,
        "{}: noise patches of {nx}×{ny} pixels, but the particles are {n}×{n}",
        path.display()
    );
    ensure!(k > 0, "{}: the noise stack is empty", path.display());
    let flat: Vec<f32> = data.iter().copied().collect();
    Ok(tch::Tensor::from_slice(&flat)
        .view([k as i64, n as i64, n as i64])
        .to_device(dev))
}

/// The coloured noise's spectrum and where it came from, or `None` for white noise: the
/// manifest's (cropped as the images are with --downsample), else, with
/// [`NoiseChoice::Coloured`], the background's of 1,000 images spread over the set, as they
/// are read.
fn coloured_noise(
    settings: &PrepareSettings,
    normalization: Normalization,
    images: &dyn ImageSource,
    downsampled_from: Option<usize>,
) -> Result<Option<(NoiseSpectrum, String)>> {
    if settings.noise == NoiseChoice::White || settings.noise_stack.is_some() {
        return Ok(None);
    }
    let particles = &settings.particles;
    let n = images.box_size();
    if let Some((path, spectrum)) = mcg_dataset::folder::noise_spectrum_beside(particles)? {
        return Ok(Some(match downsampled_from {
            Some(from) => (
                spectrum
                    .cropped(n)
                    .with_context(|| format!("{}: noise.spectrum", path.display()))?,
                format!(
                    "{}'s spectrum, cropped {from} → {n} (--downsample)",
                    path.display()
                ),
            ),
            None => (spectrum, format!("{}'s spectrum", path.display())),
        }));
    }
    if settings.noise != NoiseChoice::Coloured {
        return Ok(None);
    }
    let radius = settings.noise_radius.unwrap_or_else(|| {
        normalization
            .background_radius(n)
            .unwrap_or(0.375 * n as f64)
    });
    ensure!(
        radius.is_finite() && radius >= 0.0 && radius < n as f64 / 2.0,
        "--noise-radius {radius}: expected a radius from 0 to below half the box ({} px)",
        n / 2
    );
    let count = 1000.min(images.len());
    let indices: Vec<usize> = (0..count).map(|i| i * images.len() / count).collect();
    let mut sample = Array3::zeros((count, n, n));
    images
        .read_batch(&indices, sample.view_mut())
        .with_context(|| format!("reading {}", particles.display()))?;
    let spectrum = NoiseSpectrum::estimate_background(sample.view(), radius)
        .with_context(|| format!("{}: estimating the noise spectrum", particles.display()))?;
    Ok(Some((
        spectrum,
        format!("the background outside {radius} px of {count} images"),
    )))
}

/// σ and where it came from. A manifest's σ is that of the particles' own box: Fourier-cropped
/// from `downsampled_from`² to n², white noise keeps its spectrum below the new Nyquist, so its
/// σ per pixel scales by n / downsampled_from.
fn noise_sigma(
    settings: &PrepareSettings,
    images: &dyn ImageSource,
    downsampled_from: Option<usize>,
) -> Result<(f64, String)> {
    if settings.noise_stack.is_some() {
        return Ok((0.0, "none: background patches from --noise-stack".into()));
    }
    if let Some(s) = settings.noise_sigma {
        ensure!(s.is_finite() && s >= 0.0, "noise σ must be ≥ 0, got {s}");
        return Ok((s, "settings".into()));
    }
    if let Some((path, s)) = mcg_dataset::folder::noise_sigma_beside(&settings.particles)? {
        return Ok(match downsampled_from {
            Some(from) => {
                let n = images.box_size();
                (
                    s * n as f64 / from as f64,
                    format!("{} × {n}/{from} (--downsample)", path.display()),
                )
            }
            None => (s, format!("{}", path.display())),
        });
    }
    let s = estimate_noise_sigma(images, 1000)?;
    Ok((s, "estimated from the outer annulus of 1000 images".into()))
}

/// The noise σ of images estimated from their outer annulus (pixels beyond 0.9·N/2 from the
/// centre, where a centred particle has no signal): the pooled standard deviation.
pub fn estimate_noise_sigma(source: &dyn ImageSource, count: usize) -> mcg_formats::Result<f64> {
    let n = source.box_size();
    let count = count.min(source.len()).max(1);
    let mut images = Array3::<f32>::zeros((count, n, n));
    let indices: Vec<usize> = (0..count).collect();
    source.read_batch(&indices, images.view_mut())?;
    let c = (n / 2) as f64;
    let r0 = 0.9 * c;
    let (mut sum, mut sum2, mut k) = (0.0, 0.0, 0usize);
    for image in images.outer_iter() {
        for ((y, x), v) in image.indexed_iter() {
            let r = ((x as f64 - c).powi(2) + (y as f64 - c).powi(2)).sqrt();
            if r >= r0 {
                let v = f64::from(*v);
                sum += v;
                sum2 += v * v;
                k += 1;
            }
        }
    }
    let mean = sum / k as f64;
    Ok((sum2 / k as f64 - mean * mean).max(0.0).sqrt())
}
