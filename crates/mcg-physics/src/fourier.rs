//! The one Fourier layout shared by projectors, CTF, shifts and the simulator.
//!
//! The **centred half-plane spectrum** of an `m × m` real image `f` whose origin is pixel
//! `(m/2, m/2)` is
//!
//! `F[ky][kx] = Σ_{y,x} f[y][x] · exp(−2πi (kx·(x − m/2) + ky·(y − m/2)) / m)`
//!
//! stored row-major as `spec[ky * (m/2 + 1) + kx]` with `ky` the FFT row index in `0..m`
//! (signed frequency [`signed_freq`]) and `kx` in `0..=m/2`. Frequency index `j` on an `m`-pixel
//! grid of `apix` Å is `j / (m·apix)` Å⁻¹. Because the origin is the box centre, this spectrum is
//! the plain DFT multiplied by `(−1)^(kx+ky)`; a real, centro-symmetric image has a real spectrum.

use std::sync::Arc;

use ndarray::{ArrayView2, ArrayViewMut2};
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Number of stored columns of the half-plane spectrum of an `m`-pixel image: `m/2 + 1`.
pub fn half_width(m: usize) -> usize {
    m / 2 + 1
}

/// Signed frequency of FFT index `j` on an `m`-point grid: `j` for `j < m/2`, else `j − m`
/// (Nyquist, `j = m/2`, maps to `−m/2`).
pub fn signed_freq(j: usize, m: usize) -> i64 {
    if j < m / 2 {
        j as i64
    } else {
        j as i64 - m as i64
    }
}

/// Planned 2D real FFTs of one size, with their scratch space. Not `Sync`: give each thread its
/// own (they are cheap to make; plans are shared through `Arc`).
pub struct Fft2 {
    m: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    row_real: Vec<f32>,
    row_spec: Vec<Complex32>,
    column: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

impl std::fmt::Debug for Fft2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft2")
            .field("m", &self.m)
            .finish_non_exhaustive()
    }
}

impl Fft2 {
    /// Plans the transforms of `m × m` images (`m` even).
    pub fn new(m: usize) -> Self {
        assert!(
            m >= 2 && m.is_multiple_of(2),
            "Fft2 needs an even size, got {m}"
        );
        let mut real_planner = RealFftPlanner::<f32>::new();
        let mut planner = FftPlanner::<f32>::new();
        let r2c = real_planner.plan_fft_forward(m);
        let c2r = real_planner.plan_fft_inverse(m);
        let col_fwd = planner.plan_fft_forward(m);
        let col_inv = planner.plan_fft_inverse(m);
        let scratch_len = col_fwd
            .get_inplace_scratch_len()
            .max(col_inv.get_inplace_scratch_len())
            .max(r2c.get_scratch_len())
            .max(c2r.get_scratch_len());
        Self {
            m,
            r2c,
            c2r,
            col_fwd,
            col_inv,
            row_real: vec![0.0; m],
            row_spec: vec![Complex32::default(); half_width(m)],
            column: vec![Complex32::default(); m],
            scratch: vec![Complex32::default(); scratch_len],
        }
    }

    /// Image edge in pixels.
    pub fn size(&self) -> usize {
        self.m
    }

    /// Length of a half-plane spectrum: `m · (m/2 + 1)`.
    pub fn spectrum_len(&self) -> usize {
        self.m * half_width(self.m)
    }

    /// Centred half-plane spectrum of `image` (origin at pixel `m/2`), into `spec`.
    pub fn forward(&mut self, image: ArrayView2<'_, f32>, spec: &mut [Complex32]) {
        let (m, h) = (self.m, half_width(self.m));
        assert_eq!(image.dim(), (m, m), "image size");
        assert_eq!(spec.len(), m * h, "spectrum length");
        for (y, row) in image.rows().into_iter().enumerate() {
            for (dst, src) in self.row_real.iter_mut().zip(row.iter()) {
                *dst = *src;
            }
            self.r2c
                .process_with_scratch(&mut self.row_real, &mut self.row_spec, &mut self.scratch)
                .expect("buffer sizes are planned");
            spec[y * h..(y + 1) * h].copy_from_slice(&self.row_spec);
        }
        for kx in 0..h {
            for y in 0..m {
                self.column[y] = spec[y * h + kx];
            }
            self.col_fwd
                .process_with_scratch(&mut self.column, &mut self.scratch);
            for ky in 0..m {
                let sign = if (kx + ky) % 2 == 0 { 1.0 } else { -1.0 };
                spec[ky * h + kx] = self.column[ky] * sign;
            }
        }
    }

    /// The image (origin at pixel `m/2`) whose centred half-plane spectrum is `spec`, into
    /// `image`. `spec` is used as workspace and left changed. The transform is normalised so that
    /// `inverse(forward(f)) = f`.
    pub fn inverse(&mut self, spec: &mut [Complex32], mut image: ArrayViewMut2<'_, f32>) {
        let (m, h) = (self.m, half_width(self.m));
        assert_eq!(image.dim(), (m, m), "image size");
        assert_eq!(spec.len(), m * h, "spectrum length");
        let norm = 1.0 / (m * m) as f32;
        for kx in 0..h {
            for ky in 0..m {
                let sign = if (kx + ky) % 2 == 0 { norm } else { -norm };
                self.column[ky] = spec[ky * h + kx] * sign;
            }
            self.col_inv
                .process_with_scratch(&mut self.column, &mut self.scratch);
            for y in 0..m {
                spec[y * h + kx] = self.column[y];
            }
        }
        for (y, mut row) in image.rows_mut().into_iter().enumerate() {
            self.row_spec.copy_from_slice(&spec[y * h..(y + 1) * h]);
            // A real row has real DC and Nyquist terms; drop rounding residue.
            self.row_spec[0].im = 0.0;
            self.row_spec[h - 1].im = 0.0;
            self.c2r
                .process_with_scratch(&mut self.row_spec, &mut self.row_real, &mut self.scratch)
                .expect("buffer sizes are planned and DC/Nyquist are real");
            for (dst, src) in row.iter_mut().zip(self.row_real.iter()) {
                *dst = *src;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The definition, evaluated directly.
    fn naive(image: &Array2<f32>) -> Vec<Complex32> {
        let m = image.nrows();
        let h = half_width(m);
        let c = (m / 2) as f64;
        let mut out = vec![Complex32::default(); m * h];
        for ky in 0..m {
            for kx in 0..h {
                let (mut re, mut im) = (0.0f64, 0.0f64);
                for y in 0..m {
                    for x in 0..m {
                        let ph = -2.0
                            * std::f64::consts::PI
                            * (kx as f64 * (x as f64 - c) + ky as f64 * (y as f64 - c))
                            / m as f64;
                        re += f64::from(image[[y, x]]) * ph.cos();
                        im += f64::from(image[[y, x]]) * ph.sin();
                    }
                }
                out[ky * h + kx] = Complex32::new(re as f32, im as f32);
            }
        }
        out
    }

    #[test]
    fn forward_matches_definition_and_inverse_restores() {
        for m in [2usize, 6, 8] {
            let image = Array2::from_shape_fn((m, m), |(y, x)| {
                ((y * 7 + x * 3) % 5) as f32 - 1.3 + 0.1 * x as f32
            });
            let mut fft = Fft2::new(m);
            let mut spec = vec![Complex32::default(); fft.spectrum_len()];
            fft.forward(image.view(), &mut spec);
            for (a, b) in spec.iter().zip(naive(&image)) {
                assert!((a - b).norm() < 1e-4, "m={m}: {a} vs {b}");
            }
            let mut back = Array2::zeros((m, m));
            fft.inverse(&mut spec, back.view_mut());
            for (a, b) in back.iter().zip(image.iter()) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn centred_delta_has_flat_real_spectrum() {
        let m = 8;
        let mut image = Array2::zeros((m, m));
        image[[m / 2, m / 2]] = 1.0;
        let mut fft = Fft2::new(m);
        let mut spec = vec![Complex32::default(); fft.spectrum_len()];
        fft.forward(image.view(), &mut spec);
        assert!(
            spec.iter()
                .all(|c| (c.re - 1.0).abs() < 1e-6 && c.im.abs() < 1e-6)
        );
    }

    #[test]
    fn signed_frequencies() {
        assert_eq!(signed_freq(0, 8), 0);
        assert_eq!(signed_freq(3, 8), 3);
        assert_eq!(signed_freq(4, 8), -4);
        assert_eq!(signed_freq(7, 8), -1);
    }
}
