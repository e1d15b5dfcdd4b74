//! Fourier cropping: particle images of an `n`² box made `m`² (`m < n`, both even) by keeping
//! the frequencies below the new Nyquist, as cryoDRGN's `downsample` does, so the pixel size
//! grows by `n/m` and nothing aliases. Pixel values are kept (a band-limited image is resampled
//! exactly: its spectrum is scaled by `(m/n)²`, the ratio of the transforms' normalisations).

use anyhow::{Result, ensure};
use mcg_formats::ImageSource;
use mcg_physics::fourier::{Fft2, half_width, signed_freq};
use ndarray::{Array2, Array3, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis};
use rustfft::num_complex::Complex32;

/// The images of `inner`, Fourier-cropped to `box_size`² as they are read.
pub struct Downsampled {
    inner: Box<dyn ImageSource>,
    m: usize,
}

impl std::fmt::Debug for Downsampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downsampled")
            .field("from", &self.inner.box_size())
            .field("to", &self.m)
            .finish_non_exhaustive()
    }
}

impl Downsampled {
    /// `inner`'s images cropped to `box_size`² (even, at least 2, at most `inner`'s box).
    pub fn new(inner: Box<dyn ImageSource>, box_size: usize) -> Result<Self> {
        let n = inner.box_size();
        ensure!(
            box_size >= 2 && box_size.is_multiple_of(2) && box_size <= n,
            "a box of {box_size}: expected an even box from 2 to the images' {n}"
        );
        Ok(Self { inner, m: box_size })
    }
}

impl ImageSource for Downsampled {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn box_size(&self) -> usize {
        self.m
    }

    fn pixel_size(&self) -> f64 {
        self.inner.pixel_size() * self.inner.box_size() as f64 / self.m as f64
    }

    fn read_batch(
        &self,
        indices: &[usize],
        mut out: ArrayViewMut3<'_, f32>,
    ) -> mcg_formats::Result<()> {
        let n = self.inner.box_size();
        let mut full = Array3::<f32>::zeros((indices.len(), n, n));
        self.inner.read_batch(indices, full.view_mut())?;
        let mut crop = Cropper::new(n, self.m);
        for (src, dst) in full.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
            crop.apply(src, dst);
        }
        Ok(())
    }
}

/// `images` Fourier-cropped to `m`² as they are read, and `set`'s optics groups updated to
/// match (pixel size × n/m, image size m): what `convert --box`, `downsample` and
/// `train --downsample` use.
pub fn downsampled(
    set: &mut mcg_formats::ParticleSet,
    images: Box<dyn ImageSource>,
    m: usize,
) -> Result<Box<dyn ImageSource>> {
    let from = images.box_size();
    let cropped = Downsampled::new(images, m)?;
    for group in &mut set.optics {
        group.pixel_size *= from as f64 / m as f64;
        group.image_size = Some(m);
    }
    Ok(Box::new(cropped))
}

/// Fourier cropping of `n`² images to `m`², with its planned transforms and buffers.
#[derive(Debug)]
pub struct Cropper {
    n: usize,
    m: usize,
    big: Fft2,
    small: Fft2,
    spec_n: Vec<Complex32>,
    spec_m: Vec<Complex32>,
}

impl Cropper {
    /// Plans the cropping of `n`² images to `m`² (both even, `m ≤ n`).
    pub fn new(n: usize, m: usize) -> Self {
        let (big, small) = (Fft2::new(n), Fft2::new(m));
        let (spec_n, spec_m) = (
            vec![Complex32::default(); big.spectrum_len()],
            vec![Complex32::default(); small.spectrum_len()],
        );
        Self {
            n,
            m,
            big,
            small,
            spec_n,
            spec_m,
        }
    }

    /// Writes into `out` (`m`²) the image `image` (`n`²) with the frequencies below the new
    /// Nyquist kept: the centred spectrum's rows and columns of signed frequency in
    /// `[−m/2, m/2)` (the row at −m/2 is the new Nyquist row), times `(m/n)²`.
    pub fn apply(&mut self, image: ArrayView2<'_, f32>, out: ArrayViewMut2<'_, f32>) {
        let (n, m) = (self.n, self.m);
        let (hn, hm) = (half_width(n), half_width(m));
        self.big.forward(image, &mut self.spec_n);
        let scale = ((m * m) as f64 / (n * n) as f64) as f32;
        for ky in 0..m {
            let source_row = signed_freq(ky, m).rem_euclid(n as i64) as usize;
            for kx in 0..hm {
                self.spec_m[ky * hm + kx] = self.spec_n[source_row * hn + kx] * scale;
            }
        }
        self.small.inverse(&mut self.spec_m, out);
    }
}

/// `image` Fourier-cropped to `m`² (a convenience over [`Cropper`]).
pub fn crop(image: ArrayView2<'_, f32>, m: usize) -> Array2<f32> {
    let mut out = Array2::zeros((m, m));
    Cropper::new(image.dim().0, m).apply(image, out.view_mut());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// A band-limited image: cosines of frequencies below `m/2` about the centre pixel.
    fn waves(n: usize, waves: &[(f64, f64, f64, f64)]) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(y, x)| {
            let (u, v) = (x as f64 - (n / 2) as f64, y as f64 - (n / 2) as f64);
            waves
                .iter()
                .map(|&(a, kx, ky, phase)| {
                    a * (2.0 * PI * (kx * u + ky * v) / n as f64 + phase).cos()
                })
                .sum::<f64>() as f32
        })
    }

    /// Coloured noise cropped from 32² to 16² has the spectrum `NoiseSpectrum::cropped` says
    /// (the trainer's coloured noise after `--downsample` relies on it).
    #[test]
    fn cropped_coloured_noise_has_the_cropped_spectrum() {
        use mcg_physics::noise::{NoiseSpectrum, add_coloured_noise};
        use rand::SeedableRng;
        let spectrum = NoiseSpectrum::realistic(32, 3.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut small = Array3::<f32>::zeros((3000, 16, 16));
        for mut out in small.axis_iter_mut(Axis(0)) {
            let mut image = Array2::<f32>::zeros((32, 32));
            add_coloured_noise(image.view_mut(), &spectrum, &mut rng);
            out.assign(&crop(image.view(), 16));
        }
        let want = spectrum.cropped(16).unwrap();
        let found = NoiseSpectrum::estimate_background(small.view(), 0.0).unwrap();
        let variance =
            small.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / small.len() as f64;
        // The new Nyquist column (and the Nyquist row's kx = 0) of a real image holds only
        // the Hermitian-symmetric part of what was cropped: half its power. Below Nyquist the
        // table is exact.
        let m = 16i64;
        let mut expected = 0.0;
        for ky in -m / 2..m / 2 {
            for kx in -m / 2..m / 2 {
                let r = ((kx * kx + ky * ky) as f64).sqrt();
                let half = kx == -m / 2 || (ky == -m / 2 && kx == 0);
                expected += want.power_at(r) * if half { 0.5 } else { 1.0 };
            }
        }
        expected /= (m * m) as f64;
        assert!(
            (variance / expected - 1.0).abs() < 0.02,
            "{variance} vs {expected}"
        );
        for shell in 2..=7 {
            let (got, expected) = (found.power()[shell], want.power()[shell]);
            assert!(
                (got / expected - 1.0).abs() < 0.08,
                "shell {shell}: {got} vs {expected}"
            );
        }
        // White noise of σ becomes white noise of σ·m/n.
        let white = NoiseSpectrum::white(32, 2.0).cropped(16).unwrap();
        assert!(
            (white.variance() - 1.0).abs() < 1e-12,
            "{}",
            white.variance()
        );
    }

    /// Cropping a band-limited 64² image to 32² samples it exactly on the coarser grid (the
    /// same cosines at half the frequency index), pixel values kept.
    #[test]
    fn a_band_limited_image_is_resampled_exactly() {
        let (n, m) = (64, 32);
        // Frequencies below 16 on the 64 grid: (amplitude, kx, ky, phase).
        let w = [
            (1.0, 3.0, -5.0, 0.3),
            (0.5, -11.0, 7.0, 1.1),
            (0.25, 15.0, 15.0, -0.7),
            (2.0, 0.0, 0.0, 0.0),
        ];
        let small = crop(waves(n, &w).view(), m);
        // The same waves on the 32 grid: index k on 64 pixels is k on 32 pixels of twice the size.
        let expected = waves(m, &w);
        let err = small
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "max error {err}");
    }

    /// Frequencies above the new Nyquist are removed, not folded back (no aliasing).
    #[test]
    fn frequencies_above_the_new_nyquist_are_removed() {
        let (n, m) = (64, 32);
        let high = waves(n, &[(1.0, 20.0, 3.0, 0.0), (1.0, -2.0, 25.0, 0.4)]);
        let small = crop(high.view(), m);
        let peak = small.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(peak < 1e-4, "aliased energy {peak}");
    }

    /// White noise keeps its spectrum below the new Nyquist: σ per pixel scales by m/n.
    #[test]
    fn white_noise_sigma_scales_by_the_box_ratio() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, m) = (64, 16);
        let mut sum2 = 0.0f64;
        let count = 40;
        for _ in 0..count {
            let noise = Array2::from_shape_fn((n, n), |_| {
                let v: f64 = StandardNormal.sample(&mut rng);
                v as f32
            });
            sum2 += crop(noise.view(), m)
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>();
        }
        let sigma = (sum2 / (count * m * m) as f64).sqrt();
        assert!(
            (sigma - 0.25).abs() < 0.01,
            "σ {sigma}, expected 16/64 = 0.25"
        );
    }

    /// Cropping to the same box is the identity (to rounding).
    #[test]
    fn the_same_box_is_the_identity() {
        let image = waves(16, &[(1.0, 2.0, -3.0, 0.2), (0.3, 7.0, 5.0, 1.0)]);
        let same = crop(image.view(), 16);
        for (a, b) in same.iter().zip(image.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
