//! The one 3D real FFT of cubic boxes (the Fourier projector, density maps, FSC and alignment),
//! in `f32` or `f64`, parallel over planes.
//!
//! **Origin convention.** The forward transform is the plain DFT with its origin at voxel
//! index 0:
//!
//! `F[kz][ky][kx] = Σ_{z,y,x} f[z][y][x] · exp(−2πi (kx·x + ky·y + kz·z) / n)`
//!
//! stored as an `n × n × (n/2 + 1)` half spectrum (`kz`, `ky` FFT indices in `0..n`, signed
//! frequency [`crate::fourier::signed_freq`]; `kx` in `0..=n/2`); the other half follows from
//! `F(−k) = conj F(k)`. The inverse is the same sum with `exp(+2πi …)`. A volume whose origin is
//! the box centre, voxel `n/2` (the conventions' layout), has the transform
//! `F(k)·(−1)^(kx+ky+kz)`: [`centre_origin`] applies that factor, exactly (it only flips signs),
//! after [`Fft3::forward`] for a centred spectrum, or before an inverse to take one back.
//! Correlations of two maps do not see the factor.
//!
//! **Order of operations.** The forward transforms rows (x) real-to-complex, then columns (y),
//! then z. The inverse runs the complex passes in either order ([`ColumnOrder`]), then rows
//! complex-to-real. The two orders agree to rounding, not to the bit, and each caller keeps the
//! order its outputs were made with: [`Fft3::inverse`] (the mirror of the forward, z then y) for
//! FFT-based filtering and correlations, y then z for density maps, so that synthetic data sets
//! stay byte for byte what they were.

use std::sync::Arc;

use ndarray::{Array3, ArrayView3, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::num_traits::Zero;
use rustfft::{Fft, FftNum, FftPlanner};

/// Planned forward and inverse 3D transforms of `n³` boxes in `T` (`f32` or `f64`). Shareable
/// between threads.
pub struct Fft3<T: FftNum> {
    n: usize,
    r2c: Arc<dyn RealToComplex<T>>,
    c2r: Arc<dyn ComplexToReal<T>>,
    forward: Arc<dyn Fft<T>>,
    inverse: Arc<dyn Fft<T>>,
}

impl<T: FftNum> std::fmt::Debug for Fft3<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft3").field("n", &self.n).finish()
    }
}

/// The order of the inverse's two complex passes, before the rows' complex-to-real transforms
/// (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnOrder {
    /// z first, then y: the forward's passes in reverse ([`Fft3::inverse`]).
    ZThenY,
    /// y first, then z (density maps).
    YThenZ,
}

impl<T: FftNum> Fft3<T> {
    /// Plans the transforms of an `n × n × n` box (`n` even and non-zero).
    pub fn new(n: usize) -> Self {
        assert!(n > 0 && n.is_multiple_of(2), "box edge {n} must be even");
        let mut real = RealFftPlanner::<T>::new();
        let mut complex = FftPlanner::<T>::new();
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

    /// The half spectrum of `volume` (`n × n × n`, `[z][y][x]`), unnormalised, origin at
    /// voxel 0.
    pub fn forward(&self, volume: ArrayView3<'_, T>) -> Array3<Complex<T>> {
        let n = self.n;
        assert_eq!(volume.dim(), (n, n, n), "volume shape");
        self.forward_rows(|z, y, row| {
            row.iter_mut()
                .zip(volume.slice(ndarray::s![z, y, ..]))
                .for_each(|(r, v)| *r = *v);
            true
        })
    }

    /// The half spectrum, as [`Fft3::forward`], of the volume whose row `(z, y)` (its `n` voxels
    /// along x) `fill(z, y, row)` writes into `row`, which it receives zeroed. A row for which
    /// `fill` returns `false` is taken to be zero and its transform skipped, so a zero-padded
    /// volume costs only its filled rows (and the column passes). `fill` is called once per row,
    /// from several threads.
    pub fn forward_rows<F>(&self, fill: F) -> Array3<Complex<T>>
    where
        F: Fn(usize, usize, &mut [T]) -> bool + Sync,
    {
        let n = self.n;
        let mut spec = Array3::<Complex<T>>::zeros((n, n, self.half_width()));
        // Rows (x) with real-to-complex transforms, then columns (y), one z plane per task.
        spec.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(z, mut plane)| {
                let mut row = vec![T::zero(); n];
                let mut scratch = self.r2c.make_scratch_vec();
                for (y, mut out) in plane.outer_iter_mut().enumerate() {
                    // The transform uses its input as scratch space: clear it for every row.
                    row.fill(T::zero());
                    if !fill(z, y, &mut row) {
                        continue;
                    }
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
    /// `inverse(forward(f)) = f` to rounding; [`Fft3::inverse_with`] in the order
    /// [`ColumnOrder::ZThenY`].
    pub fn inverse(&self, spec: Array3<Complex<T>>) -> Array3<T> {
        let n = self.n;
        let scale = T::one() / T::from_usize(n * n * n).expect("a box size fits a float");
        self.inverse_with(spec, ColumnOrder::ZThenY, scale)
    }

    /// The inverse DFT of the half spectrum `spec` (`n × n × (n/2 + 1)`, origin at voxel 0),
    /// its complex passes in `order`, every voxel then multiplied by `scale` (`1/n³` inverts
    /// [`Fft3::forward`]). The imaginary parts of the self-conjugate `kx = 0` and `kx = n/2`
    /// coefficients are ignored. `spec` is used as scratch space.
    pub fn inverse_with(
        &self,
        mut spec: Array3<Complex<T>>,
        order: ColumnOrder,
        scale: T,
    ) -> Array3<T> {
        let (n, h) = (self.n, self.half_width());
        assert_eq!(spec.dim(), (n, n, h), "spectrum shape");
        let inverse = &*self.inverse;
        if order == ColumnOrder::YThenZ {
            // y, one z plane per task.
            spec.axis_iter_mut(Axis(0))
                .into_par_iter()
                .for_each(|plane| transform_columns(inverse, plane));
        }
        // z, one y plane per task.
        spec.axis_iter_mut(Axis(1))
            .into_par_iter()
            .for_each(|plane| transform_columns(inverse, plane));
        let mut out = Array3::<T>::zeros((n, n, n));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(spec.axis_iter_mut(Axis(0)).into_par_iter())
            .for_each(|(mut slab, mut plane)| {
                if order == ColumnOrder::ZThenY {
                    transform_columns(inverse, plane.view_mut());
                }
                let mut line = vec![Complex::<T>::zero(); h];
                let mut scratch = self.c2r.make_scratch_vec();
                for (mut row, spec_row) in slab.outer_iter_mut().zip(plane.outer_iter()) {
                    line.iter_mut().zip(spec_row).for_each(|(l, s)| *l = *s);
                    // Real up to rounding; the transform needs them exactly real.
                    line[0].im = T::zero();
                    line[h - 1].im = T::zero();
                    let row = row.as_slice_mut().expect("rows are contiguous");
                    self.c2r
                        .process_with_scratch(&mut line, row, &mut scratch)
                        .expect("buffer sizes are planned and DC/Nyquist are real");
                    row.iter_mut().for_each(|v| *v = *v * scale);
                }
            });
        out
    }
}

/// Whether moving the origin from voxel 0 to the box centre negates coefficient
/// `(kz, ky, kx)`: whether `(−1)^(kx+ky+kz)` is `−1`.
pub fn centring_flips(kz: usize, ky: usize, kx: usize) -> bool {
    !(kx + ky + kz).is_multiple_of(2)
}

/// Moves the origin of a 3D spectrum (any `[kz][ky][kx]` grid of FFT indices of an even box)
/// between voxel 0 and the box centre: multiplies every coefficient by `(−1)^(kx+ky+kz)`, in
/// place. Exact (a sign flip), and its own inverse. Parallel.
pub fn centre_origin<T: FftNum>(spec: &mut Array3<Complex<T>>) {
    Zip::indexed(spec).par_for_each(|(kz, ky, kx), value| {
        if centring_flips(kz, ky, kx) {
            *value = -*value;
        }
    });
}

/// Transforms every column (axis 0) of `plane` in place: the columns are gathered into one
/// contiguous buffer, transformed as a batch, and scattered back.
fn transform_columns<T: FftNum>(fft: &dyn Fft<T>, mut plane: ArrayViewMut2<'_, Complex<T>>) {
    let (len, columns) = plane.dim();
    let mut buffer = vec![Complex::<T>::zero(); len * columns];
    for (r, row) in plane.outer_iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            buffer[c * len + r] = *v;
        }
    }
    let mut scratch = vec![Complex::<T>::zero(); fft.get_inplace_scratch_len()];
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

    /// The direct DFT of `volume` at `(kz, ky, kx)` with the origin at voxel `origin` on every
    /// axis.
    fn direct_dft(volume: &Array3<f32>, k: (usize, usize, usize), origin: f64) -> Complex64 {
        let n = volume.dim().0;
        let (kz, ky, kx) = k;
        let mut sum = Complex64::default();
        for ((z, y, x), v) in volume.indexed_iter() {
            let offset = |i: usize| i as f64 - origin;
            let phase = -2.0
                * std::f64::consts::PI
                * (kx as f64 * offset(x) + ky as f64 * offset(y) + kz as f64 * offset(z))
                / n as f64;
            sum += Complex64::from_polar(f64::from(*v), phase);
        }
        sum
    }

    /// The largest difference between `spec` and the direct DFT with the origin at `origin`.
    fn worst_difference(spec: &Array3<Complex<f32>>, volume: &Array3<f32>, origin: f64) -> f64 {
        spec.indexed_iter()
            .map(|(k, got)| {
                let want = direct_dft(volume, k, origin);
                (Complex64::new(f64::from(got.re), f64::from(got.im)) - want).norm()
            })
            .fold(0.0, f64::max)
    }

    /// The largest voxel difference between two volumes.
    fn largest_difference<A: Copy + Into<f64>>(a: &Array3<A>, b: &Array3<A>) -> f64 {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| ((*x).into() - (*y).into()).abs())
            .fold(0.0, f64::max)
    }

    /// The forward transform equals the direct DFT sum on a 6³ grid, coefficient by
    /// coefficient, and the inverse gives the volume back.
    #[test]
    fn forward_matches_direct_dft_and_inverse_round_trips() {
        let n = 6;
        let volume = test_volume(n);
        let fft = Fft3::new(n);
        let spec = fft.forward(volume.view());
        let worst = worst_difference(&spec, &volume, 0.0);
        assert!(
            worst < 1e-4,
            "largest difference from the direct DFT: {worst}"
        );

        let err = largest_difference(&fft.inverse(spec), &volume);
        assert!(err < 1e-5, "round trip error {err}");
    }

    /// After [`centre_origin`] the spectrum is the DFT with the origin at voxel `n/2`.
    #[test]
    fn centre_origin_moves_the_origin_to_the_box_centre() {
        let n = 6;
        let volume = test_volume(n);
        let mut spec = Fft3::new(n).forward(volume.view());
        centre_origin(&mut spec);
        let worst = worst_difference(&spec, &volume, (n / 2) as f64);
        assert!(
            worst < 1e-4,
            "largest difference from the centred DFT: {worst}"
        );
    }

    /// Both orders of the inverse take an `f64` spectrum back to its volume (times `n³`
    /// without the scale), and agree to rounding.
    #[test]
    fn both_inverse_orders_round_trip_in_f64() {
        let n = 8;
        let volume = test_volume(n).mapv(f64::from);
        let fft = Fft3::<f64>::new(n);
        let spec = fft.forward(volume.view());
        let scale = 1.0 / (n * n * n) as f64;
        for order in [ColumnOrder::ZThenY, ColumnOrder::YThenZ] {
            let err = largest_difference(&fft.inverse_with(spec.clone(), order, scale), &volume);
            assert!(err < 1e-12, "{order:?}: round trip error {err}");
        }
    }

    /// Rows that `fill` skips transform as zeros: the spectrum of a zero-padded volume from its
    /// filled rows alone is that of the padded array.
    #[test]
    fn skipped_rows_are_zero() {
        let (n, m) = (4, 8);
        let small = test_volume(n);
        let mut padded = Array3::<f32>::zeros((m, m, m));
        padded
            .slice_mut(ndarray::s![2..2 + n, 2..2 + n, 2..2 + n])
            .assign(&small);
        let fft = Fft3::new(m);
        let inside = 2..2 + n;
        let from_rows = fft.forward_rows(|z, y, row| {
            if !inside.contains(&z) || !inside.contains(&y) {
                return false;
            }
            for x in 0..n {
                row[x + 2] = small[[z - 2, y - 2, x]];
            }
            true
        });
        let full = fft.forward(padded.view());
        let worst = from_rows
            .iter()
            .zip(full.iter())
            .map(|(a, b)| (a - b).norm())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }
}
