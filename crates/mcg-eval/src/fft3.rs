//! Three-dimensional real FFTs of cubic boxes, parallel over planes.
//!
//! The forward transform is the plain DFT with its origin at voxel index 0:
//!
//! `F[kz][ky][kx] = Σ_{z,y,x} f[z][y][x] · exp(−2πi (kx·x + ky·y + kz·z) / n)`
//!
//! stored as an `n × n × (n/2 + 1)` array (`kz`, `ky` FFT indices in `0..n`, signed frequency
//! [`mcg_physics::fourier::signed_freq`]; `kx` in `0..=n/2`). The remaining half follows from
//! `F(−k) = conj F(k)`. Moving the origin to the box centre `n/2` (the conventions' layout)
//! multiplies every coefficient by `(−1)^(kx+ky+kz)`; correlations of two maps, the only use
//! here, do not see that factor.

use std::sync::Arc;

use ndarray::{Array3, ArrayView3, ArrayViewMut2, Axis};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Planned forward and inverse transforms of `n³` boxes. Shareable between threads.
pub struct Fft3 {
    n: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for Fft3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft3").field("n", &self.n).finish()
    }
}

impl Fft3 {
    /// Plans the transforms of an `n × n × n` box (`n` even and non-zero).
    pub fn new(n: usize) -> Self {
        assert!(n > 0 && n.is_multiple_of(2), "box edge {n} must be even");
        let mut real = RealFftPlanner::<f32>::new();
        let mut complex = FftPlanner::<f32>::new();
        Self {
            n,
            r2c: real.plan_fft_forward(n),
            c2r: real.plan_fft_inverse(n),
            forward: complex.plan_fft_forward(n),
            inverse: complex.plan_fft_inverse(n),
        }
    }

    /// The box edge `n`.
    pub fn size(&self) -> usize {
        self.n
    }

    /// Stored `kx` columns: `n/2 + 1`.
    pub fn half_width(&self) -> usize {
        self.n / 2 + 1
    }

    /// The half spectrum of `volume` (`n × n × n`, `[z][y][x]`), unnormalised.
    pub fn forward(&self, volume: ArrayView3<'_, f32>) -> Array3<Complex32> {
        let n = self.n;
        assert_eq!(volume.dim(), (n, n, n), "volume shape");
        let mut spec = Array3::<Complex32>::zeros((n, n, self.half_width()));
        // Rows (x) with real-to-complex transforms, then columns (y), one z plane per task.
        spec.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(z, mut plane)| {
                let mut row = vec![0.0f32; n];
                let mut scratch = self.r2c.make_scratch_vec();
                for (y, mut out) in plane.outer_iter_mut().enumerate() {
                    row.iter_mut()
                        .zip(volume.slice(ndarray::s![z, y, ..]))
                        .for_each(|(r, v)| *r = *v);
                    let out = out.as_slice_mut().expect("rows are contiguous");
                    self.r2c
                        .process_with_scratch(&mut row, out, &mut scratch)
                        .expect("buffer sizes are planned");
                }
                transform_columns(&*self.forward, plane);
            });
        // Then z, one y plane per task.
        spec.axis_iter_mut(Axis(1))
            .into_par_iter()
            .for_each(|plane| transform_columns(&*self.forward, plane));
        spec
    }

    /// The volume whose [`Fft3::forward`] is `spec`: the inverse DFT divided by `n³`, so that
    /// `inverse(forward(f)) = f` to rounding. The imaginary parts of the self-conjugate `kx = 0`
    /// and `kx = n/2` coefficients are ignored. `spec` is used as scratch space.
    pub fn inverse(&self, mut spec: Array3<Complex32>) -> Array3<f32> {
        let (n, h) = (self.n, self.half_width());
        assert_eq!(spec.dim(), (n, n, h), "spectrum shape");
        spec.axis_iter_mut(Axis(1))
            .into_par_iter()
            .for_each(|plane| transform_columns(&*self.inverse, plane));
        let scale = 1.0 / (n * n * n) as f32;
        let mut out = Array3::<f32>::zeros((n, n, n));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(spec.axis_iter_mut(Axis(0)).into_par_iter())
            .for_each(|(mut slab, mut plane)| {
                transform_columns(&*self.inverse, plane.view_mut());
                let mut line = vec![Complex32::default(); h];
                let mut scratch = self.c2r.make_scratch_vec();
                for (mut row, spec_row) in slab.outer_iter_mut().zip(plane.outer_iter()) {
                    line.iter_mut().zip(spec_row).for_each(|(l, s)| *l = *s);
                    line[0].im = 0.0;
                    line[h - 1].im = 0.0;
                    let row = row.as_slice_mut().expect("rows are contiguous");
                    self.c2r
                        .process_with_scratch(&mut line, row, &mut scratch)
                        .expect("buffer sizes are planned and DC/Nyquist are real");
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            });
        out
    }
}

/// Transforms every column (axis 0) of `plane` in place: the columns are gathered into one
/// contiguous buffer, transformed as a batch, and scattered back.
fn transform_columns(fft: &dyn Fft<f32>, mut plane: ArrayViewMut2<'_, Complex32>) {
    let (len, columns) = plane.dim();
    let mut buffer = vec![Complex32::default(); len * columns];
    for (r, row) in plane.outer_iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            buffer[c * len + r] = *v;
        }
    }
    let mut scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
    fft.process_with_scratch(&mut buffer, &mut scratch);
    for (r, mut row) in plane.outer_iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = buffer[c * len + r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustfft::num_complex::Complex64;

    fn test_volume(n: usize) -> Array3<f32> {
        Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            ((x * 7 + y * 13 + z * 29) % 17) as f32 - 8.0 + 0.25 * (x as f32 - y as f32)
        })
    }

    /// The forward transform equals the direct DFT sum on a 6³ grid, coefficient by
    /// coefficient, and the inverse gives the volume back.
    #[test]
    fn forward_matches_direct_dft_and_inverse_round_trips() {
        let n = 6;
        let volume = test_volume(n);
        let fft = Fft3::new(n);
        let spec = fft.forward(volume.view());
        let mut worst: f64 = 0.0;
        for ((kz, ky, kx), got) in spec.indexed_iter() {
            let mut sum = Complex64::default();
            for ((z, y, x), v) in volume.indexed_iter() {
                let phase =
                    -2.0 * std::f64::consts::PI * (kx * x + ky * y + kz * z) as f64 / n as f64;
                sum += Complex64::from_polar(f64::from(*v), phase);
            }
            let diff = Complex64::new(f64::from(got.re), f64::from(got.im)) - sum;
            worst = worst.max(diff.norm());
        }
        assert!(
            worst < 1e-4,
            "largest difference from the direct DFT: {worst}"
        );

        let back = fft.inverse(spec);
        let err = back
            .iter()
            .zip(volume.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "round trip error {err}");
    }
}
