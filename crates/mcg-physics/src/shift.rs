//! Sub-pixel image shifts, RELION's origin convention.
//!
//! A particle's origin `o` (`_rlnOriginXAngst`, `_rlnOriginYAngst`) says where the particle sits
//! relative to the box centre, with a minus sign: a particle with origin `o` appears with its
//! centre at `box centre − o`. So a simulator that wants to produce a particle with origin `o`
//! moves the centred projection by `t = −o/apix` pixels ([`Shift::simulation_translation`]), and
//! recentring an observed image moves it by `t = +o/apix` ([`Shift::recentring_translation`]).
//! Translations are applied as Fourier phase ramps, circularly and without padding.

use std::f64::consts::PI;

use ndarray::{ArrayViewMut3, Axis};
use rayon::prelude::*;
use rustfft::num_complex::{Complex32, Complex64};
use serde::{Deserialize, Serialize};

use crate::fourier::{Fft2, half_width, signed_freq};

/// A particle's origin offset in Å (`_rlnOriginXAngst`, `_rlnOriginYAngst`).
///
/// A simulated particle with origin `o` appears with its centre at `box centre − o`;
/// recentring an image means shifting it by `+o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    /// Origin along x, Å.
    pub x: f64,
    /// Origin along y, Å.
    pub y: f64,
}

impl Shift {
    /// The origin in pixels of `apix` Å, `[x, y]` (RELION 3.0's `_rlnOriginX`, `_rlnOriginY`).
    pub fn to_pixels(&self, apix: f64) -> [f64; 2] {
        [self.x / apix, self.y / apix]
    }

    /// The translation `[tx, ty]` in pixels that turns a centred particle into one with this
    /// origin: `−o/apix`, for [`translate_images`] / [`translate_spectrum`].
    pub fn simulation_translation(&self, apix: f64) -> [f64; 2] {
        [-self.x / apix, -self.y / apix]
    }

    /// The translation `[tx, ty]` in pixels that brings a particle with this origin back to the
    /// box centre: `+o/apix`.
    pub fn recentring_translation(&self, apix: f64) -> [f64; 2] {
        self.to_pixels(apix)
    }
}

/// Translates the image behind a centred half-plane spectrum (layout of [`crate::fourier`], `m`
/// even, length `m·(m/2 + 1)`) by `(tx, ty)` pixels, in place: image content moves by `+t`
/// (`f(x) → f(x − t)`, circularly), i.e. `F(k) → F(k)·exp(−2πi (kx·tx + ky·ty)/m)` with signed
/// frequencies.
///
/// **Nyquist:** on the grid `+m/2` and `−m/2` are the same frequency, so a non-integer shift has
/// no single phase there that keeps a real image real. The Nyquist row and column get the real
/// (cosine) part of the ramp, `cos(π·ty)` and `cos(π·tx)` (and `cos(π(tx + ty))` at the corner):
/// exactly the real part of the full complex phase-ramp multiplication with signed frequencies
/// (Nyquist at `−m/2`). Integer shifts are therefore exact circular rolls of any image, and
/// sub-pixel shifts are exact for images without Nyquist content; shifting by `s` and back by
/// `−s` damps the Nyquist terms by `cos²(π s)`.
pub fn translate_spectrum(spec: &mut [Complex32], m: usize, tx: f64, ty: f64) {
    assert!(
        m >= 2 && m.is_multiple_of(2),
        "translate_spectrum needs an even size, got {m}"
    );
    let h = half_width(m);
    assert_eq!(spec.len(), m * h, "spectrum length");
    let nyq = m / 2;
    // Allocation-free: each row's factor exp(−2πi ky ty/m) in f64, times the column factors
    // exp(−2πi kx tx/m) by f64 recurrence along the row (error ~ m·1e-16), rounded to f32 per
    // coefficient.
    let col_step = phase(-2.0 * PI * tx / m as f64);
    let col_nyq = (PI * tx).cos();
    for (row, values) in spec.chunks_exact_mut(h).enumerate() {
        let row_factor = if row == nyq {
            Complex64::new((PI * ty).cos(), 0.0)
        } else {
            phase(-2.0 * PI * signed_freq(row, m) as f64 * ty / m as f64)
        };
        let mut w = row_factor;
        for v in &mut values[..nyq] {
            *v *= Complex32::new(w.re as f32, w.im as f32);
            w *= col_step;
        }
        let last = if row == nyq {
            Complex64::new((PI * (tx + ty)).cos(), 0.0)
        } else {
            row_factor * col_nyq
        };
        values[nyq] *= Complex32::new(last.re as f32, last.im as f32);
    }
}

/// Translates every image of `images` (`[n][y][x]`, square, even edge) circularly by its own
/// `shifts_px[i] = [tx, ty]` pixels (content moves by `+t`), in place, by a Fourier phase ramp
/// ([`translate_spectrum`], which documents the Nyquist treatment). No padding: content leaving
/// one edge re-enters at the other. Images are processed in parallel.
pub fn translate_images(mut images: ArrayViewMut3<'_, f32>, shifts_px: &[[f64; 2]]) {
    let (count, ny, nx) = images.dim();
    assert_eq!(count, shifts_px.len(), "one shift per image");
    assert!(
        ny == nx && nx.is_multiple_of(2) && nx > 0,
        "translate_images needs square images with an even edge, got {ny}×{nx}"
    );
    let m = nx;
    images
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(shifts_px.par_iter())
        .for_each_init(
            || {
                let fft = Fft2::new(m);
                let spec = vec![Complex32::default(); fft.spectrum_len()];
                (fft, spec)
            },
            |(fft, spec), (mut image, &[tx, ty])| {
                if tx == 0.0 && ty == 0.0 {
                    return;
                }
                fft.forward(image.view(), spec);
                translate_spectrum(spec, m, tx, ty);
                fft.inverse(spec, image.view_mut());
            },
        );
}

/// `exp(iθ)`.
fn phase(theta: f64) -> Complex64 {
    let (s, c) = theta.sin_cos();
    Complex64::new(c, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};
    use proptest::prelude::*;
    use std::f64::consts::PI;

    /// Tolerance of f32 FFT round trips on O(1) images.
    const TOL: f64 = 1e-4;

    /// A band-limited image (no content at or beyond `m/4` per axis), as an analytic function
    /// so shifted copies are exact: `Σ a cos(2π(u x + v y)/m + φ)`.
    struct Waves(Vec<(f64, f64, f64, f64)>);

    impl Waves {
        fn seeded(m: usize, seed: u64) -> Self {
            let mut state = seed;
            let mut next = || {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            let band = (m / 4) as f64;
            Self(
                (0..6)
                    .map(|_| {
                        let u = ((2.0 * next() - 1.0) * band).trunc();
                        let v = ((2.0 * next() - 1.0) * band).trunc();
                        (next() + 0.2, u, v, 2.0 * PI * next())
                    })
                    .collect(),
            )
        }

        fn at(&self, x: f64, y: f64, m: usize) -> f64 {
            self.0
                .iter()
                .map(|&(a, u, v, p)| a * (2.0 * PI * (u * x + v * y) / m as f64 + p).cos())
                .sum()
        }

        fn image(&self, m: usize, tx: f64, ty: f64) -> Array2<f32> {
            Array2::from_shape_fn((m, m), |(y, x)| {
                self.at(x as f64 - tx, y as f64 - ty, m) as f32
            })
        }
    }

    fn shift_one(image: &Array2<f32>, tx: f64, ty: f64) -> Array2<f32> {
        let mut stack = image.clone().insert_axis(Axis(0));
        translate_images(stack.view_mut(), &[[tx, ty]]);
        stack.index_axis_move(Axis(0), 0)
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| f64::from((x - y).abs()))
            .fold(0.0, f64::max)
    }

    fn noise_image(m: usize, seed: u64) -> Array2<f32> {
        let mut state = seed;
        Array2::from_shape_fn((m, m), |_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
    }

    #[test]
    fn origin_conventions() {
        let o = Shift { x: 10.0, y: -5.0 };
        assert_eq!(o.to_pixels(2.5), [4.0, -2.0]);
        assert_eq!(o.simulation_translation(2.5), [-4.0, 2.0]);
        assert_eq!(o.recentring_translation(2.5), [4.0, -2.0]);
    }

    #[test]
    fn simulated_then_recentred_particle_is_back_in_place() {
        // A blob placed with origin o sits at centre − o/apix; recentring brings it back.
        let m = 32;
        let blob = gaussian(m, 2.0);
        let o = Shift { x: 7.5, y: -3.0 };
        let [sx, sy] = o.simulation_translation(2.5);
        let placed = shift_one(&blob, sx, sy);
        let (cx, cy) = centroid(&placed);
        assert!((cx - (16.0 - 3.0)).abs() < 1e-3 && (cy - (16.0 + 1.2)).abs() < 1e-3);
        let [rx, ry] = o.recentring_translation(2.5);
        assert!(max_diff(&shift_one(&placed, rx, ry), &blob) < TOL);
    }

    #[test]
    fn integer_shift_is_a_circular_roll_of_any_image() {
        let m = 16;
        let image = noise_image(m, 7);
        for (tx, ty) in [(3i64, 0i64), (0, -5), (8, 8), (-7, 2), (17, -1)] {
            let got = shift_one(&image, tx as f64, ty as f64);
            let want = Array2::from_shape_fn((m, m), |(y, x)| {
                let sy = (y as i64 - ty).rem_euclid(m as i64) as usize;
                let sx = (x as i64 - tx).rem_euclid(m as i64) as usize;
                image[[sy, sx]]
            });
            assert!(max_diff(&got, &want) < TOL, "({tx}, {ty})");
        }
    }

    #[test]
    fn spectrum_shift_matches_full_complex_ramp() {
        // Definition: full complex DFT, multiply by exp(−2πi k·t/m) with signed frequencies
        // (Nyquist −m/2), inverse, real part. Random pixels put weight on the Nyquist terms.
        let m = 8;
        let image = noise_image(m, 99);
        for (tx, ty) in [(0.3, -1.7), (2.5, 0.5), (-0.25, 3.0)] {
            let got = shift_one(&image, tx, ty);
            let signed = |j: usize| {
                if j < m / 2 {
                    j as f64
                } else {
                    j as f64 - m as f64
                }
            };
            let want = Array2::from_shape_fn((m, m), |(y, x)| {
                let mut acc = 0.0;
                for ky in 0..m {
                    for kx in 0..m {
                        let (fx, fy) = (signed(kx), signed(ky));
                        let (mut re, mut im) = (0.0, 0.0);
                        for (yy, row) in image.rows().into_iter().enumerate() {
                            for (xx, &v) in row.iter().enumerate() {
                                let ph = -2.0 * PI * (fx * xx as f64 + fy * yy as f64) / m as f64;
                                re += f64::from(v) * ph.cos();
                                im += f64::from(v) * ph.sin();
                            }
                        }
                        let ph =
                            2.0 * PI * (fx * (x as f64 - tx) + fy * (y as f64 - ty)) / m as f64;
                        acc += re * ph.cos() - im * ph.sin();
                    }
                }
                (acc / (m * m) as f64) as f32
            });
            assert!(max_diff(&got, &want) < TOL, "({tx}, {ty})");
        }
    }

    #[test]
    fn stack_shifts_each_image_by_its_own_amount() {
        let m = 16;
        let waves = Waves::seeded(m, 3);
        let shifts = [[0.5, -1.25], [0.0, 0.0], [-2.75, 4.5], [3.0, 0.1]];
        let mut stack = Array3::zeros((shifts.len(), m, m));
        for mut img in stack.axis_iter_mut(Axis(0)) {
            img.assign(&waves.image(m, 0.0, 0.0));
        }
        translate_images(stack.view_mut(), &shifts);
        for (i, [tx, ty]) in shifts.iter().enumerate() {
            let want = waves.image(m, *tx, *ty);
            assert!(max_diff(&stack.index_axis(Axis(0), i).to_owned(), &want) < TOL);
        }
    }

    /// A spectrum of random coefficients in `[−½, ½)²`, from a seed.
    fn random_spectrum(m: usize, seed: u64) -> Vec<Complex32> {
        // 4m² values, enough for the 2·m·(m/2 + 1) parts.
        let values = noise_image(2 * m, seed);
        let mut parts = values.iter().copied();
        (0..m * half_width(m))
            .map(|_| Complex32::new(parts.next().unwrap(), parts.next().unwrap()))
            .collect()
    }

    #[test]
    fn ramp_matches_direct_phases() {
        // The documented factor per coefficient, evaluated directly in f64: the ramp with
        // signed frequencies, and its real part on the Nyquist row and column. (Moved from
        // mcg-synth's rigid-body projector, whose ramp this function became.)
        let m = 64;
        let (tx, ty) = (1.37, -2.61);
        let nyq = m / 2;
        let spec = random_spectrum(m, 11);
        let mut got = spec.clone();
        translate_spectrum(&mut got, m, tx, ty);
        let ramp = |f: f64, t: f64| Complex64::from_polar(1.0, -2.0 * PI * f * t / m as f64);
        let mut worst = 0.0f64;
        for (i, (g, v)) in got.iter().zip(&spec).enumerate() {
            let (ky, kx) = (i / half_width(m), i % half_width(m));
            let fy = signed_freq(ky, m) as f64;
            let factor = match (ky == nyq, kx == nyq) {
                (true, true) => Complex64::new((PI * (tx + ty)).cos(), 0.0),
                (true, false) => ramp(kx as f64, tx) * (PI * ty).cos(),
                (false, true) => ramp(fy, ty) * (PI * tx).cos(),
                (false, false) => ramp(kx as f64, tx) * ramp(fy, ty),
            };
            let want = Complex64::new(f64::from(v.re), f64::from(v.im)) * factor;
            let diff = Complex64::new(f64::from(g.re), f64::from(g.im)) - want;
            worst = worst.max(diff.norm());
        }
        assert!(worst < 1e-5, "ramps differ by {worst}");
    }

    #[test]
    fn zero_shift_is_the_identity() {
        for m in [2, 8, 16, 64] {
            let spec = random_spectrum(m, 5);
            for (tx, ty) in [(0.0, 0.0), (-0.0, 0.0), (0.0, -0.0), (-0.0, -0.0)] {
                let mut got = spec.clone();
                translate_spectrum(&mut got, m, tx, ty);
                assert_eq!(got, spec, "m {m}, shift ({tx}, {ty})");
            }
        }
    }

    fn gaussian(m: usize, sigma: f64) -> Array2<f32> {
        let c = (m / 2) as f64;
        Array2::from_shape_fn((m, m), |(y, x)| {
            let r2 = (x as f64 - c).powi(2) + (y as f64 - c).powi(2);
            (-r2 / (2.0 * sigma * sigma)).exp() as f32
        })
    }

    fn centroid(image: &Array2<f32>) -> (f64, f64) {
        let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
        for ((y, x), &v) in image.indexed_iter() {
            let v = f64::from(v);
            sx += v * x as f64;
            sy += v * y as f64;
            s += v;
        }
        (sx / s, sy / s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn shift_and_back_is_identity(tx in -5.0..5.0f64, ty in -5.0..5.0f64, seed in 0u64..1_000) {
            let m = 16;
            let image = Waves::seeded(m, seed).image(m, 0.0, 0.0);
            let there = shift_one(&image, tx, ty);
            let back = shift_one(&there, -tx, -ty);
            prop_assert!(max_diff(&back, &image) < TOL);
        }

        #[test]
        fn band_limited_shift_is_exact(tx in -5.0..5.0f64, ty in -5.0..5.0f64, seed in 0u64..1_000) {
            let m = 16;
            let waves = Waves::seeded(m, seed);
            let got = shift_one(&waves.image(m, 0.0, 0.0), tx, ty);
            prop_assert!(max_diff(&got, &waves.image(m, tx, ty)) < TOL);
        }

        #[test]
        fn blob_centroid_moves_by_the_shift(tx in -5.0..5.0f64, ty in -5.0..5.0f64) {
            let m = 64;
            let blob = gaussian(m, 2.5);
            let (cx, cy) = centroid(&shift_one(&blob, tx, ty));
            prop_assert!((cx - (32.0 + tx)).abs() < 1e-3, "x: {} for tx {}", cx, tx);
            prop_assert!((cy - (32.0 + ty)).abs() < 1e-3, "y: {} for ty {}", cy, ty);
        }
    }
}
