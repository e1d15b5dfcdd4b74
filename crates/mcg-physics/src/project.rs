//! Projection of a volume at many poses: a real-space line integral (the reference) and a
//! Fourier-slice projector (the fast path of the simulator).
//!
//! Both follow the conventions of [`crate::pose`]: the image at pose `A` is
//! `P(x, y) = Σ_z V(Aᵀ (x, y, z)ᵀ)`, with `(x, y, z)` in voxel units relative to the box centre
//! (voxel `N/2`) and `z` in unit steps, so no voxel size enters: an image is a sum of densities,
//! which is what the discrete Fourier-slice theorem gives without any factor.
//!
//! The Fourier projector's slices are the centred half-plane spectra ([`crate::fourier`]) of
//! `2N × 2N` zero-padded images whose central `N × N` pixels (`N/2 .. 3N/2`) are the
//! projection. It interpolates them from the 3D transform of the volume zero-padded to `s·N`
//! voxels, `s` the oversampling: 2 by default (RELION's choice), any even factor on request.
//!
//! Accuracy. Trilinear interpolation of the 3D spectrum acts on the periodically repeated padded
//! volume: it multiplies the central copy by `Π sinc²(π u/sN)` on average (`u` the voxel offset
//! from the centre along each axis; by 1 where the slice meets grid planes) and leaves faint
//! ghost copies `sN` voxels away, which carry the difference. In the `2N`-periodic image a ghost
//! displaced along volume axis `j` lands back on the molecule when `(A₀ⱼ, A₁ⱼ)·s/2` is a pair of
//! integers, and it lands close to it near such poses. Both errors are of relative size about
//! `(πu/sN)²/3`, so 4× smaller at `s = 4` than at `s = 2`. The projector divides the volume
//! first by a gridding correction:
//! - `s = 2`: by the full `Π sinc²(π u/2N)` (RELION's), exact at generic poses but not undone
//!   at grid-aligned ones (the identity, quarter turns), where the image is the projection of
//!   the corrected volume, brighter by `1/sinc²(π u/2N)` per axis (1.05 at `u = N/4`). Ghosts
//!   fold back fully only there, so this is best on average: for a molecule filling the
//!   central half of the box, errors of about 0.5 % at typical poses and up to 3 % at
//!   grid-aligned ones.
//! - `s ≥ 4`: by `Π sinc(π u/sN)`, the geometric mean of the two attenuations. Ghosts fold back
//!   at many more poses (at `s = 4` also where those entries are `±½`, as after a 60° tilt or
//!   two 45° turns), and the half correction splits the error evenly between folding and
//!   non-folding poses. On the same molecule at `s = 4` it measured at most 0.44 % at any pose,
//!   half the full correction's 0.81 %, for a higher median (0.37 % against 0.13 %).
//!
//! The real-space projector's trilinear sampling instead blurs by about `0.09/σ²` for detail of
//! width `σ` voxels (0.7 % for `σ` 3–4). The ghosts also put about 1 % (at `s = 2`) of the
//! image's energy outside the central `N × N` of the padded image, which a CTF applied before
//! cropping mixes back in at the 10⁻³ level.

use std::f64::consts::PI;

use ndarray::{Array2, Array3, ArrayViewMut3, s};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use crate::PhysicsError;
use crate::fft3::{Fft3, centre_origin};
use crate::fourier::{Fft2, half_width, signed_freq};
use crate::pose::{Mat3, Pose};
use crate::volume::Volume;

/// Projects `volume` at every pose by a real-space line integral, into `out`
/// (`[poses.len()][N][N]`, densities summed along z in unit voxel steps).
///
/// Pixel `(x, y)` of image `p` (coordinates relative to pixel `N/2`, in voxels) is
/// `Σ_z V(Aᵀ (x, y, z)ᵀ)` over all integer `z` where the sample can touch the box, with `V`
/// sampled by trilinear interpolation and zero outside the box. This is the slow, obviously
/// correct reference for [`FourierProjector`] (about 1 ms per image at `N = 32`). Parallel
/// over poses.
///
/// # Panics
/// If `out` is not `[poses.len()][N][N]`.
pub fn project_real_space(volume: &Volume, poses: &[Pose], mut out: ArrayViewMut3<'_, f32>) {
    let n = volume.box_size();
    assert_eq!(
        out.dim(),
        (poses.len(), n, n),
        "projection output must be [poses][N][N]"
    );
    let voxels = volume
        .data()
        .as_slice()
        .expect("a Volume keeps standard layout");
    out.outer_iter_mut()
        .into_par_iter()
        .zip(poses.par_iter())
        .for_each(|(mut image, pose)| {
            let a = pose.matrix();
            let centre = (n / 2) as f64;
            // The sample at (x, y, z) is Aᵀ (x, y, z)ᵀ + centre = x·A[0] + y·A[1] + z·A[2]
            // + centre: the rows of A are the image axes in the volume's frame.
            for ((y, x), pixel) in image.indexed_iter_mut() {
                let (u, v) = (x as f64 - centre, y as f64 - centre);
                let start = [0, 1, 2].map(|j| u * a[0][j] + v * a[1][j] + centre);
                *pixel = line_integral(voxels, n, start, a[2]) as f32;
            }
        });
}

/// A volume's gridding-corrected, centred 3D spectrum on an oversampled grid, ready to cut
/// central slices from: the Fourier-slice projector.
///
/// The 3D spectrum is the transform of the volume zero-padded to `s·N` voxels per axis (`s` the
/// [oversampling](FourierProjector::oversampling), 2 by default). Slices are always spectra of
/// `2N × 2N` images, whatever `s`: their frequencies are in image-grid index units, index `j`
/// being `j / (2N·apix)` Å⁻¹, so the volume's Nyquist frequency is index `N`; image index `j` is
/// 3D-grid index `j·s/2`. Slices are zero beyond the Nyquist radius.
#[derive(Clone)]
pub struct FourierProjector {
    /// Box edge `N` of the projected volume, voxels.
    n: usize,
    /// Edge of the 3D grid in units of `N` (even, at least 2).
    oversampling: usize,
    /// The centred spectrum, interleaved `(re, im)`, for `kx` in `0 ..= q + 1` and `ky`, `kz` in
    /// `−q ..= q + 1` (`q = s·N/2` the half-width of the 3D grid), stored `[kz + q][ky + q][kx]`
    /// with `kx` fastest. Negative `kx` follows from Hermitian symmetry; indices `q` and `q + 1`
    /// repeat `−q` and `−q + 1` (the DFT is periodic), so the eight neighbours of every point
    /// within radius `q` are stored without wrapping.
    spectrum: Vec<f32>,
    /// For each row `ky` of the half-plane spectrum (FFT index `0 .. 2N`), the largest `kx` with
    /// `kx² + ky² ≤ N²`, or `None` when the whole row lies outside.
    row_extent: Vec<Option<usize>>,
}

impl std::fmt::Debug for FourierProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FourierProjector")
            .field("box_size", &self.n)
            .field("oversampling", &self.oversampling)
            .field("padded_size", &self.padded_size())
            .finish_non_exhaustive()
    }
}

impl FourierProjector {
    /// Prepares `volume` for projection with the default oversampling, 2 (RELION's "2× padded
    /// 3D transform"): [`FourierProjector::with_oversampling`]`(volume, 2)`. Takes a few
    /// milliseconds at `N = 32` and holds `8·(N + 2)(2N + 2)²` bytes (1.2 MB at `N = 32`,
    /// 69 MB at `N = 128`). Errors up to 3 % at grid-aligned poses (see the module notes); use
    /// oversampling 4 where 1 % matters.
    ///
    /// # Panics
    /// If the spectrum has 2³¹ cells or more (`N` above about 800).
    pub fn new(volume: &Volume) -> Self {
        Self::with_oversampling(volume, DEFAULT_OVERSAMPLING)
            .unwrap_or_else(|e| panic!("Fourier projector: {e}"))
    }

    /// Prepares `volume` for projection from a 3D spectrum oversampled `oversampling` times:
    /// pads it to `(s·N)³` voxels (`s = oversampling`, voxel `N/2` at padded index `s·N/2`),
    /// divides it by the gridding correction over the three axes (`u` the voxel offset from the
    /// centre), `Π sinc²(π u/2N)` at `s = 2` and `Π sinc(π u/sN)` above, and takes its centred
    /// 3D transform.
    ///
    /// The slices are the same `2N`-image spectra for every `s`; a finer grid only makes them
    /// more accurate, the interpolation errors shrinking as `1/s²` (see the module notes): at
    /// `s = 4` a molecule's projections are within about 0.5 % of the exact ones at every pose,
    /// against 3 % at `s = 2`. The price is memory, `8·(sN/2 + 2)(sN + 2)²` bytes (at `s = 4`,
    /// 8.9 MB at `N = 32` and 545 MB at `N = 128`, 8× the default's, and twice that while
    /// building), preparation time (about 10× the default's: 1.2 s at `N = 128` on two cores)
    /// and, once the spectrum outgrows the caches, slower slices (measured 1.3× at `N = 32`,
    /// about 4× at `N = 64`, 2× at `N = 128`).
    ///
    /// # Errors
    /// [`PhysicsError::Parameter`] if `oversampling` is odd or below 2, or if the spectrum
    /// would have 2³¹ cells or more (`s·N` above about 1,600).
    pub fn with_oversampling(volume: &Volume, oversampling: usize) -> Result<Self, PhysicsError> {
        if oversampling < 2 || !oversampling.is_multiple_of(2) {
            return Err(PhysicsError::Parameter {
                name: "oversampling",
                value: oversampling as f64,
                expected: "an even factor of at least 2",
            });
        }
        let n = volume.box_size();
        // Cell indices are computed in i32 on the hot path.
        let cells = oversampling
            .checked_mul(n)
            .map(|m| m / 2)
            .and_then(|q| (q + 2).checked_mul((2 * q + 2).checked_mul(2 * q + 2)?));
        if cells.is_none_or(|cells| cells >= i32::MAX as usize) {
            return Err(PhysicsError::Parameter {
                name: "oversampling",
                value: oversampling as f64,
                expected: "a 3D grid of fewer than 2³¹ cells (oversampling × box size ≲ 1,600)",
            });
        }
        let m = oversampling * n;
        let q = m / 2;
        let padded = centred_padded_spectrum(volume, m, correction_power(oversampling));
        let (stride_y, stride_z) = (q + 2, (q + 2) * (2 * q + 2));
        let cells = stride_z * (2 * q + 2);

        let mut spectrum = vec![0.0f32; 2 * cells];
        let wrap = |k: i64| k.rem_euclid(m as i64) as usize;
        spectrum
            .par_chunks_mut(2 * stride_z)
            .enumerate()
            .for_each(|(zi, plane)| {
                let kz = zi as i64 - q as i64;
                for (yi, row) in plane.chunks_exact_mut(2 * stride_y).enumerate() {
                    let ky = yi as i64 - q as i64;
                    for (kx, value) in row.chunks_exact_mut(2).enumerate() {
                        let c = if kx <= q {
                            padded[[wrap(kz), wrap(ky), kx]]
                        } else {
                            // kx = q + 1 ≡ −(q − 1) (mod 2q), and F(−k) = conj F(k).
                            padded[[wrap(-kz), wrap(-ky), m - kx]].conj()
                        };
                        value.copy_from_slice(&[c.re, c.im]);
                    }
                }
            });
        let row_extent = (0..2 * n)
            .map(|row| {
                let ky = signed_freq(row, 2 * n).unsigned_abs() as usize;
                (ky <= n).then(|| (0..=n).rev().find(|kx| kx * kx + ky * ky <= n * n))?
            })
            .collect();
        Ok(Self {
            n,
            oversampling,
            spectrum,
            row_extent,
        })
    }

    /// Edge `N` of the projected volume and of the cropped images, voxels.
    pub fn box_size(&self) -> usize {
        self.n
    }

    /// Edge `2N` of the zero-padded images whose spectra [`FourierProjector::slice`] writes,
    /// pixels: the image padding, always 2, independent of the 3D
    /// [oversampling](FourierProjector::oversampling).
    pub fn padded_size(&self) -> usize {
        2 * self.n
    }

    /// Edge of the 3D grid the slices are interpolated from, in units of `N`: the volume was
    /// zero-padded to `oversampling · N` voxels per axis before its transform (2 for
    /// [`FourierProjector::new`]).
    pub fn oversampling(&self) -> usize {
        self.oversampling
    }

    /// Writes into `spec` the centred half-plane spectrum ([`crate::fourier`], `m = 2N`) of the
    /// `2N × 2N` zero-padded projection at `pose`.
    ///
    /// The value at 2D frequency `(kx, ky)` (index units of the `2N` image grid, whatever the
    /// oversampling `s`) is the 3D spectrum at `Aᵀ (kx, ky, 0)ᵀ`, i.e. at 3D-grid index
    /// `(s/2)·Aᵀ (kx, ky, 0)ᵀ`, trilinearly interpolated, for `kx² + ky² ≤ N²` (the volume's
    /// Nyquist circle), and zero beyond. `Fft2::inverse` (`m = 2N`) of this spectrum, cropped
    /// to pixels `N/2 .. 3N/2`, is the projection (see the module notes on accuracy). Allocates
    /// nothing; about 15 µs at `N = 32` (20 µs at `s = 4`).
    ///
    /// # Panics
    /// If `spec.len() != 2N · (N + 1)`.
    pub fn slice(&self, pose: &Pose, spec: &mut [Complex32]) {
        let (n, m) = (self.n, 2 * self.n);
        let h = half_width(m);
        assert_eq!(spec.len(), m * h, "slice spectrum must be 2N·(N + 1) long");
        let a: Mat3 = pose.matrix();
        // A 2D frequency on the 2N grid is s/2 indices of the 3D grid.
        let scale = self.oversampling as f64 / 2.0;
        let ax = a[0].map(|v| (v * scale) as f32);
        let ay = a[1].map(|v| (v * scale) as f32);
        let q = self.oversampling * n / 2;
        let grid = Grid {
            data: &self.spectrum,
            stride_y: q + 2,
            stride_z: (q + 2) * (2 * q + 2),
            half_width: q as f32,
        };
        for ((row, out), extent) in spec.chunks_exact_mut(h).enumerate().zip(&self.row_extent) {
            let Some(last) = *extent else {
                out.fill(Complex32::default());
                continue;
            };
            let ky = signed_freq(row, m) as f32;
            grid.sample_row(ay.map(|v| v * ky), ax, &mut out[..=last]);
            out[last + 1..].fill(Complex32::default());
        }
    }

    /// Projects the volume at every pose into `out` (`[poses.len()][N][N]`, densities summed
    /// along z in unit voxel steps, as [`project_real_space`]): slice, inverse 2D transform on
    /// the `2N` grid, crop of the central `N × N`. Parallel over poses.
    ///
    /// # Panics
    /// If `out` is not `[poses.len()][N][N]`.
    pub fn project(&self, poses: &[Pose], mut out: ArrayViewMut3<'_, f32>) {
        let (n, m) = (self.n, 2 * self.n);
        assert_eq!(
            out.dim(),
            (poses.len(), n, n),
            "projection output must be [poses][N][N]"
        );
        out.outer_iter_mut()
            .into_par_iter()
            .zip(poses.par_iter())
            .for_each_init(
                || {
                    let fft = Fft2::new(m);
                    let spec = vec![Complex32::default(); fft.spectrum_len()];
                    (fft, spec, Array2::<f32>::zeros((m, m)))
                },
                |(fft, spec, padded), (mut image, pose)| {
                    self.slice(pose, spec);
                    fft.inverse(spec, padded.view_mut());
                    image.assign(&padded.slice(s![n / 2..n / 2 + n, n / 2..n / 2 + n]));
                },
            );
    }
}

/// Oversampling of [`FourierProjector::new`]: RELION's choice, and the one the simulator's
/// throughput is set for.
const DEFAULT_OVERSAMPLING: usize = 2;

/// The power `p` of the gridding correction at `oversampling` `s`: the volume is divided by
/// `Π sinc^p(π u/sN)`. The full correction (`p = 2`, the trilinear kernel's transform) at
/// `s = 2`; its square root (`p = 1`) above, where ghosts fold back at many more poses (see the
/// module notes).
fn correction_power(oversampling: usize) -> i32 {
    if oversampling == 2 { 2 } else { 1 }
}

/// Points per batch in [`Grid::sample_row`].
const LANES: usize = 8;

/// `Σ_z V(start + z·dir)` over the integer `z` whose samples can be non-zero, `V` trilinear and
/// zero outside the box (so only points with every coordinate in `(−1, N)` contribute).
fn line_integral(voxels: &[f32], n: usize, start: [f64; 3], dir: [f64; 3]) -> f64 {
    let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
    let upper = n as f64;
    for j in 0..3 {
        if dir[j].abs() < 1e-12 {
            if start[j] <= -1.0 || start[j] >= upper {
                return 0.0;
            }
        } else {
            let t0 = (-1.0 - start[j]) / dir[j];
            let t1 = (upper - start[j]) / dir[j];
            lo = lo.max(t0.min(t1));
            hi = hi.min(t0.max(t1));
        }
    }
    if lo > hi {
        return 0.0;
    }
    // Endpoints sample on the box's zero border, so rounding either way changes nothing.
    let (first, last) = (lo.ceil() as i64, hi.floor() as i64);
    (first..=last)
        .map(|z| {
            let z = z as f64;
            sample_zero_padded(voxels, n, [0, 1, 2].map(|j| start[j] + z * dir[j]))
        })
        .sum()
}

/// Trilinear interpolation of the voxels (an `n³` box, `[z][y][x]` in standard layout) at
/// index-space point `p = (x, y, z)`; voxels outside the box read 0.
pub fn sample_zero_padded(voxels: &[f32], n: usize, p: [f64; 3]) -> f64 {
    let floor = p.map(f64::floor);
    let t = [0, 1, 2].map(|j| p[j] - floor[j]);
    let i = floor.map(|v| v as i64);
    let ni = n as i64;
    let at = |x: i64, y: i64, z: i64| -> f64 {
        if (0..ni).contains(&x) && (0..ni).contains(&y) && (0..ni).contains(&z) {
            f64::from(voxels[((z * ni + y) * ni + x) as usize])
        } else {
            0.0
        }
    };
    let lerp = |a: f64, b: f64, t: f64| a + t * (b - a);
    let plane = |z: i64| {
        let y0 = lerp(at(i[0], i[1], z), at(i[0] + 1, i[1], z), t[0]);
        let y1 = lerp(at(i[0], i[1] + 1, z), at(i[0] + 1, i[1] + 1, z), t[0]);
        lerp(y0, y1, t[1])
    };
    lerp(plane(i[2]), plane(i[2] + 1), t[2])
}

/// The centred 3D half-spectrum `[kz][ky][kx]` (`kz`, `ky` FFT indices in `0 .. m`, `kx` in
/// `0 ..= m/2`) of the volume zero-padded to `m³` (voxel `N/2` at padded index `m/2`) and
/// divided by `Π sinc^power(π u/m)` (`u` the voxel offset from the centre on each axis).
fn centred_padded_spectrum(volume: &Volume, m: usize, power: i32) -> Array3<Complex32> {
    let n = volume.box_size();
    let offset = m / 2 - n / 2;
    // The gridding correction at voxel offset u from the centre, per axis. |x| ≤ π/4, so the
    // sinc is positive.
    let weight: Vec<f32> = (0..n)
        .map(|i| {
            let x = PI * (i as f64 - (n / 2) as f64) / m as f64;
            let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
            sinc.powi(power) as f32
        })
        .collect();
    let voxels = volume.data();
    let inside = offset..offset + n;
    // Only the rows through the volume are non-zero; the others are skipped.
    let mut spec = Fft3::<f32>::new(m).forward_rows(|z, y, row| {
        if !inside.contains(&z) || !inside.contains(&y) {
            return false;
        }
        let (vz, vy) = (z - offset, y - offset);
        let w_zy = weight[vz] * weight[vy];
        for vx in 0..n {
            row[vx + offset] = voxels[[vz, vy, vx]] / (w_zy * weight[vx]);
        }
        true
    });
    // Origin at padded index m/2: the centred transform is the DFT times (−1)^(kx + ky + kz).
    centre_origin(&mut spec);
    spec
}

/// A borrowed view of [`FourierProjector`]'s spectrum for trilinear sampling.
struct Grid<'a> {
    /// Interleaved `(re, im)`, see [`FourierProjector`].
    data: &'a [f32],
    /// Cells between neighbours along y and z.
    stride_y: usize,
    stride_z: usize,
    /// `q`: the largest stored |frequency| along y and z; added to `ky`, `kz` to make indices.
    half_width: f32,
}

impl Grid<'_> {
    /// Writes into `out[k]` the spectrum at `origin + k·step` (3D index units), trilinearly
    /// interpolated. Points must lie within radius `q`; points outside are clamped onto the
    /// stored block (a wrong value, never an out-of-bounds read).
    ///
    /// Points go in batches of [`LANES`]: the geometry of a batch (Hermitian flip, cell index,
    /// weights) is plain arithmetic on arrays, which the compiler vectorises; then each point
    /// gathers its four neighbour pairs.
    #[inline(always)]
    fn sample_row(&self, origin: [f32; 3], step: [f32; 3], out: &mut [Complex32]) {
        let (sy, sz) = (self.stride_y, self.stride_z);
        let (syi, szi) = (sy as i32, sz as i32);
        let q = self.half_width;
        let lane_offsets: [f32; LANES] = std::array::from_fn(|l| l as f32);
        for (batch, chunk) in out.chunks_mut(LANES).enumerate() {
            let k0 = (batch * LANES) as f32;
            let mut cell = [0i32; LANES];
            let mut sign = [0.0f32; LANES];
            let mut tx = [0.0f32; LANES];
            let mut ty = [0.0f32; LANES];
            let mut tz = [0.0f32; LANES];
            for l in 0..LANES {
                let k = k0 + lane_offsets[l];
                let p = [0, 1, 2].map(|j| origin[j] + k * step[j]);
                // Only kx ≥ 0 is stored: F(−p) = conj F(p).
                let s = if p[0] < 0.0 { -1.0 } else { 1.0 };
                // Storage coordinates, in [0, q] along x and [0, 2q] along y and z up to
                // rounding. The clamps make that exact (and map NaN to 0), which keeps every
                // cell and its neighbours inside the stored block.
                let x = (s * p[0]).max(0.0).min(q);
                let y = (s * p[1] + q).max(0.0).min(2.0 * q);
                let z = (s * p[2] + q).max(0.0).min(2.0 * q);
                // SAFETY: x, y, z are finite and in [0, 2q] ⊂ i32's range, as the unchecked
                // conversion requires; it compiles to a plain (vector) truncation.
                let (x0, y0, z0): (i32, i32, i32) = unsafe {
                    (
                        x.to_int_unchecked(),
                        y.to_int_unchecked(),
                        z.to_int_unchecked(),
                    )
                };
                tx[l] = x - x0 as f32;
                ty[l] = y - y0 as f32;
                tz[l] = z - z0 as f32;
                sign[l] = s;
                // At most the last cell, below i32::MAX (checked in
                // `FourierProjector::with_oversampling`).
                cell[l] = z0 * szi + y0 * syi + x0;
            }
            for (l, value) in chunk.iter_mut().enumerate() {
                let (uy, uz) = (1.0 - ty[l], 1.0 - tz[l]);
                // Each (y, z) neighbour row holds the x pair (x0, x0 + 1) side by side: blend
                // the four pairs (re, im, re, im) with their (y, z) weights, then blend in x.
                let acc = weighted_quads(
                    self.data,
                    2 * cell[l] as usize,
                    2 * sy,
                    2 * sz,
                    [uy * uz, ty[l] * uz, uy * tz[l], ty[l] * tz[l]],
                );
                let (ux, tx) = (1.0 - tx[l], tx[l]);
                *value = Complex32::new(
                    ux * acc[0] + tx * acc[2],
                    sign[l] * (ux * acc[1] + tx * acc[3]),
                );
            }
        }
    }
}

/// `Σ_k weights[k] · data[o_k .. o_k + 4]` for the offsets `o = start, start + sy, start + sz,
/// start + sz + sy` (floats): the four neighbour pairs of a cell, blended.
#[inline(always)]
fn weighted_quads(data: &[f32], start: usize, sy: usize, sz: usize, weights: [f32; 4]) -> [f32; 4] {
    let offsets = [start, start + sy, start + sz, start + sz + sy];
    // The last quad is the furthest: one check covers all four.
    assert!(
        start
            .checked_add(sz + sy + 4)
            .is_some_and(|end| end <= data.len()),
        "cell outside the spectrum"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_add_ps, _mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_setzero_ps, _mm_storeu_ps,
        };
        let mut out = [0.0f32; 4];
        // SAFETY: SSE is part of the x86_64 baseline; every offset is at most
        // `start + sz + sy`, so each load reads four floats inside `data` (checked above);
        // `out` holds four floats.
        unsafe {
            let mut acc = _mm_setzero_ps();
            for (offset, w) in offsets.into_iter().zip(weights) {
                let quad = _mm_loadu_ps(data.as_ptr().add(offset));
                acc = _mm_add_ps(acc, _mm_mul_ps(quad, _mm_set1_ps(w)));
            }
            _mm_storeu_ps(out.as_mut_ptr(), acc);
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut acc = [0.0f32; 4];
        for (offset, w) in offsets.into_iter().zip(weights) {
            for i in 0..4 {
                acc[i] += w * data[offset + i];
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, stream};
    use ndarray::{Array3, Axis};
    use proptest::prelude::*;
    use rand::Rng;
    use rustfft::num_complex::Complex64;

    // The requirement: the projectors agree, and each matches the exact projection, to a
    // relative error below 1 % of the image norm for a band-limited volume. Measured on
    // `molecule()` (σ 3–4 voxels) over 2,000 random poses and the 320 poses of
    // `special_poses()`, against the exact z-sum of the analytically rotated volume
    // (`exact_projection`):
    // - real space: trilinear sampling blurs by about 0.09/σ²; 0.72 % median, ≤ 0.80 %;
    // - Fourier, oversampling 4: 0.37 % median, ≤ 0.44 % at random poses, ≤ 0.41 % at special
    //   ones;
    // - agreement, oversampling 4: 0.69 % median, ≤ 0.83 % at random poses, ≤ 0.97 % at special
    //   ones.
    const SPEC_TOL: f64 = 1e-2;
    // Regression guards for the default (oversampling 2), which does not meet the requirement:
    // against the exact projection, measured 0.54 % median and ≤ 2.8 % over the 2,000 random
    // poses, 3.3 % at grid-aligned ones, where the image is exactly the projection of the
    // corrected volume (`identity_projection_is_sum_of_corrected_volume`); the proptest draws
    // arbitrary angles, which may come close to those.
    const DEFAULT_FOURIER_TOL: f64 = 4e-2;
    // Agreement of the default with the real-space projector on the 64 poses of
    // `default_oversampling_accuracy_is_as_measured`: measured 0.94 % median, 2.05 % worst.
    const DEFAULT_AGREEMENT_MEDIAN: f64 = 1.0e-2;
    const DEFAULT_AGREEMENT_WORST: f64 = 2.2e-2;

    /// Relative error `‖a − b‖ / ‖b‖`.
    fn rel_err<'a>(
        a: impl IntoIterator<Item = &'a f32>,
        b: impl IntoIterator<Item = &'a f32>,
    ) -> f64 {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (x, y) in a.into_iter().zip(b) {
            num += (f64::from(*x) - f64::from(*y)).powi(2);
            den += f64::from(*y).powi(2);
        }
        (num / den).sqrt()
    }

    fn random_volume(n: usize, seed: u64) -> Volume {
        let mut rng = stream(seed, Purpose::Other(0x9e0), 0);
        Volume::new(
            Array3::from_shape_fn((n, n, n), |_| rng.random::<f32>() - 0.3),
            1.0,
        )
        .unwrap()
    }

    /// Isotropic Gaussian blobs `(centre relative to voxel N/2, σ, weight)`, sampled on voxels.
    fn blob_volume(n: usize, blobs: &[([f64; 3], f64, f64)]) -> Volume {
        let blobs: Vec<crate::Blob> = blobs
            .iter()
            .map(|&(centre, sigma, amplitude)| crate::Blob {
                centre,
                amplitude,
                sigma,
            })
            .collect();
        Volume::gaussian_blobs(n, 1.0, &blobs).unwrap()
    }

    /// Seeded blobs: centres within `radius` voxels of the box centre, σ uniform in `sigma`
    /// (voxels), weights in [0.5, 1.5].
    fn random_blobs(
        count: usize,
        radius: f64,
        sigma: (f64, f64),
        seed: u64,
    ) -> Vec<([f64; 3], f64, f64)> {
        let mut rng = stream(seed, Purpose::Other(0xb10b), 0);
        (0..count)
            .map(|_| {
                let centre = loop {
                    let c = [0; 3].map(|_| (2.0 * rng.random::<f64>() - 1.0) * radius);
                    if c.iter().map(|v| v * v).sum::<f64>() <= radius * radius {
                        break c;
                    }
                };
                let s = sigma.0 + (sigma.1 - sigma.0) * rng.random::<f64>();
                (centre, s, 0.5 + rng.random::<f64>())
            })
            .collect()
    }

    /// The band-limited test molecule at N = 32: six blobs of σ 3–4 voxels centred within 4
    /// voxels of the box centre, so the density lies well inside radius N/2 − 2.
    fn molecule() -> Vec<([f64; 3], f64, f64)> {
        random_blobs(6, 4.0, (3.0, 4.0), 8)
    }

    fn random_poses(count: usize, seed: u64) -> Vec<Pose> {
        (0..count)
            .map(|i| Pose::sample_uniform(&mut stream(seed, Purpose::Pose, i as u64)))
            .collect()
    }

    /// The line integral written as literally as possible: every z in a range wider than the
    /// rotated cube, each sample the weighted sum of its eight neighbours, zero outside.
    fn naive_projection(volume: &Volume, pose: &Pose) -> Array2<f32> {
        let n = volume.box_size();
        let v = volume.data();
        let a = pose.matrix();
        let c = (n / 2) as f64;
        let voxel = |i: [i64; 3]| -> f64 {
            if i.iter().all(|&k| k >= 0 && k < n as i64) {
                f64::from(v[[i[2] as usize, i[1] as usize, i[0] as usize]])
            } else {
                0.0
            }
        };
        Array2::from_shape_fn((n, n), |(y, x)| {
            let mut sum = 0.0;
            for z in -(n as i64)..=(n as i64) {
                let s = [x as f64 - c, y as f64 - c, z as f64];
                // Aᵀ s, then back to indices.
                let p: Vec<f64> = (0..3)
                    .map(|j| a[0][j] * s[0] + a[1][j] * s[1] + a[2][j] * s[2] + c)
                    .collect();
                for corner in 0..8 {
                    let mut w = 1.0;
                    let mut idx = [0i64; 3];
                    for j in 0..3 {
                        let lo = p[j].floor();
                        let up = (corner >> j) & 1 == 1;
                        idx[j] = lo as i64 + i64::from(up);
                        w *= if up { p[j] - lo } else { 1.0 - (p[j] - lo) };
                    }
                    sum += w * voxel(idx);
                }
            }
            sum as f32
        })
    }

    fn real_space(volume: &Volume, poses: &[Pose]) -> Array3<f32> {
        let n = volume.box_size();
        let mut out = Array3::zeros((poses.len(), n, n));
        project_real_space(volume, poses, out.view_mut());
        out
    }

    fn fourier(projector: &FourierProjector, poses: &[Pose]) -> Array3<f32> {
        let n = projector.box_size();
        let mut out = Array3::zeros((poses.len(), n, n));
        projector.project(poses, out.view_mut());
        out
    }

    #[test]
    fn real_space_matches_naive_line_integral() {
        let volume = random_volume(8, 1);
        let mut poses = random_poses(12, 2);
        poses.extend([Pose::new(10.0, 37.0, -80.0), Pose::new(0.0, 0.0, 0.0)]);
        let got = real_space(&volume, &poses);
        for (p, pose) in poses.iter().enumerate() {
            let want = naive_projection(&volume, pose);
            let err = rel_err(got.index_axis(Axis(0), p), &want);
            assert!(err < 1e-6, "pose {pose:?}: relative error {err:e}");
        }
    }

    #[test]
    fn real_space_identity_is_sum_along_z() {
        let volume = random_volume(8, 3);
        let got = real_space(&volume, &[Pose::default()]);
        let want = volume.data().sum_axis(Axis(0));
        let err = rel_err(got.index_axis(Axis(0), 0), &want);
        assert!(err < 1e-6, "relative error {err:e}");
    }

    #[test]
    fn real_space_quarter_turn_about_y_maps_axes() {
        // A(0, 90, 0) = Ry(90)ᵀ: Aᵀ (x, y, z) = (z, y, −x), so image column x (offset x − N/2)
        // sums volume slab vz = N/2 − (x − N/2) = N − x over vx; column 0 needs vz = N: empty.
        let n = 8;
        let volume = random_volume(n, 4);
        let got = real_space(&volume, &[Pose::new(0.0, 90.0, 0.0)]);
        let v = volume.data();
        let want = Array2::from_shape_fn((n, n), |(y, x)| {
            if x == 0 {
                0.0
            } else {
                (0..n).map(|vx| v[[n - x, y, vx]]).sum()
            }
        });
        let err = rel_err(got.index_axis(Axis(0), 0), &want);
        assert!(err < 1e-5, "relative error {err:e}");
    }

    /// The gridding correction that `FourierProjector::with_oversampling` documents: at
    /// oversampling `s` the volume is divided by `Π sinc^p(π u/sN)`, `p = 2` at `s = 2` and
    /// `p = 1` above; this returns the factor for one axis at voxel offset `u`.
    fn correction(oversampling: usize, n: usize, u: f64) -> f64 {
        let x = PI * u / (oversampling * n) as f64;
        let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
        if oversampling == 2 { sinc * sinc } else { sinc }
    }

    /// The centred 3D DFT of the gridding-corrected volume on the `s·N` grid, evaluated by its
    /// definition at every integer frequency (index `[kz][ky][kx]` modulo `s·N`).
    fn direct_corrected_dft(volume: &Volume, oversampling: usize) -> Array3<Complex64> {
        let n = volume.box_size();
        let m = oversampling * n;
        let c = (n / 2) as f64;
        let v = volume.data();
        let mut sources = Vec::new();
        for ((z, y, x), value) in v.indexed_iter() {
            let r = [x as f64 - c, y as f64 - c, z as f64 - c];
            let w: f64 = r.iter().map(|&u| correction(oversampling, n, u)).product();
            sources.push((r, f64::from(*value) / w));
        }
        let mut table = Array3::zeros((m, m, m));
        table
            .indexed_iter_mut()
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|((kz, ky, kx), cell)| {
                let k = [kx as f64, ky as f64, kz as f64];
                *cell = sources
                    .iter()
                    .map(|(r, value)| {
                        let phase =
                            -2.0 * PI * (k[0] * r[0] + k[1] * r[1] + k[2] * r[2]) / m as f64;
                        Complex64::from_polar(*value, phase)
                    })
                    .sum();
            });
        table
    }

    /// Trilinear interpolation of the periodic table `f` at frequency `p`.
    fn interpolate(f: &Array3<Complex64>, p: [f64; 3]) -> Complex64 {
        let m = f.dim().0 as i64;
        let mut sum = Complex64::default();
        for corner in 0..8 {
            let mut w = 1.0;
            let mut idx = [0usize; 3];
            for j in 0..3 {
                let lo = p[j].floor();
                let up = (corner >> j) & 1 == 1;
                idx[j] = (lo as i64 + i64::from(up)).rem_euclid(m) as usize;
                w *= if up { p[j] - lo } else { 1.0 - (p[j] - lo) };
            }
            sum += f[[idx[2], idx[1], idx[0]]] * w;
        }
        sum
    }

    #[test]
    fn slice_matches_direct_dft() {
        let n = 8;
        let m = 2 * n;
        let h = half_width(m);
        let volume = random_volume(n, 5);
        // Quarter and half turns sample grid points; random poses exercise the interpolation
        // and the Hermitian half-space lookup.
        let mut poses = vec![
            Pose::default(),
            Pose::new(90.0, 0.0, 0.0),
            Pose::new(0.0, 90.0, 0.0),
            Pose::new(90.0, 90.0, 0.0),
            Pose::new(0.0, 90.0, 90.0),
            Pose::new(-90.0, 90.0, 180.0),
            Pose::new(0.0, 180.0, 0.0),
            Pose::new(180.0, 0.0, 0.0),
        ];
        poses.extend(random_poses(8, 6));
        let mut spec = vec![Complex32::default(); m * h];
        for oversampling in [2, 4] {
            let table = direct_corrected_dft(&volume, oversampling);
            let scale = table.iter().map(|c| c.norm()).fold(0.0, f64::max);
            let projector = FourierProjector::with_oversampling(&volume, oversampling).unwrap();
            // Frequency k of the 2N image is index k·s/2 of the s·N grid.
            let step = oversampling as f64 / 2.0;
            for pose in &poses {
                projector.slice(pose, &mut spec);
                let a = pose.matrix();
                let mut worst = 0.0f64;
                for ky_row in 0..m {
                    let ky = signed_freq(ky_row, m) as f64;
                    for kx in 0..h {
                        let kx = kx as f64;
                        let want = if kx * kx + ky * ky <= (n * n) as f64 {
                            interpolate(
                                &table,
                                [0, 1, 2].map(|j| (kx * a[0][j] + ky * a[1][j]) * step),
                            )
                        } else {
                            Complex64::default()
                        };
                        let got = spec[ky_row * h + kx as usize];
                        let got = Complex64::new(f64::from(got.re), f64::from(got.im));
                        worst = worst.max((got - want).norm() / scale);
                    }
                }
                assert!(
                    worst < 1e-5,
                    "oversampling {oversampling}, pose {pose:?}: max error {worst:e} of max |F|"
                );
            }
        }
    }

    #[test]
    fn identity_projection_is_sum_of_corrected_volume() {
        // At the identity the slice is the kz = 0 plane of the grid: no interpolation, so the
        // image is the z-sum of the gridding-corrected volume (band-limited blobs, so the
        // Nyquist-sphere cut-off is invisible).
        let n = 16;
        let volume = blob_volume(n, &random_blobs(3, 1.5, (1.5, 1.5), 7));
        let v = volume.data();
        for oversampling in [2, 4] {
            let w = |i: usize| correction(oversampling, n, i as f64 - (n / 2) as f64);
            let corrected = Array2::from_shape_fn((n, n), |(y, x)| {
                (0..n)
                    .map(|z| f64::from(v[[z, y, x]]) / (w(x) * w(y) * w(z)))
                    .sum::<f64>() as f32
            });
            let projector = FourierProjector::with_oversampling(&volume, oversampling).unwrap();
            let got = fourier(&projector, &[Pose::default()]);
            let err = rel_err(got.index_axis(Axis(0), 0), &corrected);
            assert!(
                err < 1e-4,
                "oversampling {oversampling}: relative error {err:e}"
            );
        }
    }

    #[test]
    fn oversampling_is_an_even_factor_and_leaves_the_image_padding_alone() {
        let volume = random_volume(8, 10);
        for bad in [0, 1, 3, 5] {
            assert!(
                matches!(
                    FourierProjector::with_oversampling(&volume, bad),
                    Err(PhysicsError::Parameter {
                        name: "oversampling",
                        ..
                    })
                ),
                "oversampling {bad} must be refused"
            );
        }
        for oversampling in [2, 4, 6] {
            let projector = FourierProjector::with_oversampling(&volume, oversampling).unwrap();
            assert_eq!(projector.oversampling(), oversampling);
            assert_eq!(projector.box_size(), 8);
            assert_eq!(projector.padded_size(), 16);
        }
        let default = FourierProjector::new(&volume);
        assert_eq!(default.oversampling(), 2);
        let explicit = FourierProjector::with_oversampling(&volume, 2).unwrap();
        let pose = Pose::new(12.0, 34.0, 56.0);
        let slice = |projector: &FourierProjector| {
            let mut spec = vec![Complex32::default(); 16 * half_width(16)];
            projector.slice(&pose, &mut spec);
            spec
        };
        assert_eq!(slice(&default), slice(&explicit), "new() is oversampling 2");
    }

    /// Relative errors of the Fourier projector against the real-space one at every pose.
    fn agreement(projector: &FourierProjector, volume: &Volume, poses: &[Pose]) -> Vec<f64> {
        let real = real_space(volume, poses);
        let four = fourier(projector, poses);
        (0..poses.len())
            .map(|p| rel_err(four.index_axis(Axis(0), p), real.index_axis(Axis(0), p)))
            .collect()
    }

    /// `(median, worst)` of some errors.
    fn median_and_worst(mut errors: Vec<f64>) -> (f64, f64) {
        errors.sort_by(f64::total_cmp);
        (errors[errors.len() / 2], errors[errors.len() - 1])
    }

    /// The 320 poses whose Euler angles are multiples of 45°: the grid-aligned ones, where the
    /// slice falls on grid planes, and those with matrix entries ±½ and ±1/√2, where the
    /// interpolation's ghost copies fold back onto the molecule at oversampling 4 (the worst
    /// cases of the Fourier projector).
    fn special_poses() -> Vec<Pose> {
        let mut poses = Vec::new();
        for rot in 0..8 {
            for tilt in 0..5 {
                for psi in 0..8 {
                    let angle = |i: i32| f64::from(i) * 45.0;
                    poses.push(Pose::new(angle(rot), angle(tilt), angle(psi)));
                }
            }
        }
        poses
    }

    #[test]
    fn oversampled_projectors_agree_within_one_percent() {
        // Measured 0.69 % median, 0.75 % worst (oversampling 2: 0.94 %, 2.05 %); what remains is
        // mostly the real-space projector's blur.
        let n = 32;
        let volume = blob_volume(n, &molecule());
        let projector = FourierProjector::with_oversampling(&volume, 4).unwrap();
        let (median, worst) =
            median_and_worst(agreement(&projector, &volume, &random_poses(64, 9)));
        assert!(
            median < SPEC_TOL && worst < SPEC_TOL,
            "oversampling 4, relative error between projectors: median {median:.3e}, \
             worst {worst:.3e}"
        );
    }

    #[test]
    fn oversampled_projectors_agree_within_one_percent_at_special_poses() {
        // Measured 0.72 % median, 0.97 % worst for the agreement; 0.25 % median, 0.41 % worst
        // for the Fourier projector against the exact projection. With the full correction
        // (sinc², as at oversampling 2) the worst cases were 1.23 % and 0.81 %.
        let n = 32;
        let blobs = molecule();
        let volume = blob_volume(n, &blobs);
        let poses = special_poses();
        let projector = FourierProjector::with_oversampling(&volume, 4).unwrap();
        let (median, worst) = median_and_worst(agreement(&projector, &volume, &poses));
        assert!(
            median < SPEC_TOL && worst < SPEC_TOL,
            "oversampling 4, relative error between projectors: median {median:.3e}, \
             worst {worst:.3e}"
        );
        let four = fourier(&projector, &poses);
        let errors = poses
            .iter()
            .enumerate()
            .map(|(p, pose)| rel_err(four.index_axis(Axis(0), p), &exact_projection(&blobs, pose)))
            .collect();
        let (median, worst) = median_and_worst(errors);
        assert!(
            worst < SPEC_TOL,
            "oversampling 4, relative error against the exact projection: median \
             {median:.3e}, worst {worst:.3e}"
        );
    }

    #[test]
    fn default_oversampling_accuracy_is_as_measured() {
        // A regression guard, not the requirement: see `DEFAULT_AGREEMENT_*`.
        let n = 32;
        let volume = blob_volume(n, &molecule());
        let projector = FourierProjector::new(&volume);
        let (median, worst) =
            median_and_worst(agreement(&projector, &volume, &random_poses(64, 9)));
        assert!(
            median < DEFAULT_AGREEMENT_MEDIAN && worst < DEFAULT_AGREEMENT_WORST,
            "oversampling 2, relative error between projectors: median {median:.3e}, \
             worst {worst:.3e} (measured 0.94 %, 2.05 %)"
        );
    }

    /// The exact projection of the blobs at `pose`: `V_A(r) = V(Aᵀ r)` moves each blob centre
    /// `c` to `A c` (the blobs are isotropic), and the projection of `V_A` at the identity is a
    /// z-sum of samples, with no interpolation.
    fn exact_projection(blobs: &[([f64; 3], f64, f64)], pose: &Pose) -> Array2<f32> {
        let n = 32;
        let a = pose.matrix();
        let rotated: Vec<_> = blobs
            .iter()
            .map(|(c, s, w)| {
                (
                    [0, 1, 2].map(|i| (0..3).map(|j| a[i][j] * c[j]).sum()),
                    *s,
                    *w,
                )
            })
            .collect();
        real_space(&blob_volume(n, &rotated), &[Pose::default()]).index_axis_move(Axis(0), 0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn projecting_a_rotated_volume_equals_projecting_at_the_pose(
            rot in 0.0..360.0f64, tilt in 0.0..180.0f64, psi in 0.0..360.0f64,
        ) {
            let n = 32;
            let pose = Pose::new(rot, tilt, psi);
            let blobs = molecule();
            let reference = exact_projection(&blobs, &pose);
            let volume = blob_volume(n, &blobs);
            let real = real_space(&volume, &[pose]);
            let err = |image: &Array3<f32>| rel_err(image.index_axis(Axis(0), 0), &reference);
            let real_err = err(&real);
            let fine_err =
                err(&fourier(&FourierProjector::with_oversampling(&volume, 4).unwrap(), &[pose]));
            let default_err = err(&fourier(&FourierProjector::new(&volume), &[pose]));
            prop_assert!(real_err < SPEC_TOL, "real-space relative error {:.3e}", real_err);
            prop_assert!(
                fine_err < SPEC_TOL,
                "Fourier (oversampling 4) relative error {:.3e}", fine_err
            );
            prop_assert!(
                default_err < DEFAULT_FOURIER_TOL,
                "Fourier (oversampling 2) relative error {:.3e}", default_err
            );
        }
    }
}
