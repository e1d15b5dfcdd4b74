//! Density maps from atoms, without aliasing (conventions, "Density from atoms").
//!
//! ρ(r) = Σⱼ Zⱼ · g_σ(r − rⱼ), g_σ the normalised 3D Gaussian, σ = 0.225 · resolution (the
//! ChimeraX `molmap` / EMAN2 `pdb2mrc` model). The map holds ρ in **Z per Å³** at the voxel
//! centres, band-limited to the grid: it is the inverse DFT of the analytic transform
//! F(k) = Σⱼ Zⱼ exp(−2π²σ²|k|²) exp(−2πi k·rⱼ) sampled at k = j/(N·apix), so nothing above
//! Nyquist folds back, however small σ is next to a voxel. Hence Σ_voxels ρ · apix³ = Σⱼ Zⱼ
//! exactly (the DC term), and the map is real. It is periodic with the box: atoms must sit well
//! inside it (a few σ from the faces) or their density wraps around.

use mcg_physics::Volume;
use mcg_physics::fft3::{ColumnOrder, Fft3, centring_flips};
use mcg_physics::fourier::signed_freq;
use ndarray::{Array2, Array3, Axis, Zip, linalg::general_mat_mul};
use rayon::prelude::*;
use rustfft::num_complex::Complex64;
use serde::{Deserialize, Serialize};

use crate::{AtomicModel, SynthError};

/// σ of the atomic Gaussian per Å of resolution: the transform falls to 1/e at 1/resolution.
pub const SIGMA_PER_RESOLUTION: f64 = 0.225;

/// Sampling and blur of a density map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DensityConfig {
    /// Edge of the cubic box in voxels (even, ≥ 2). Voxel `i` sits at `(i − N/2)·apix` Å.
    pub box_size: usize,
    /// Voxel size in Å.
    pub apix: f64,
    /// Resolution in Å; the Gaussians have σ = 0.225 · resolution. Default 2 · apix.
    pub resolution: f64,
}

impl DensityConfig {
    /// A box of `box_size` voxels of `apix` Å at the default resolution, 2 · apix.
    pub fn new(box_size: usize, apix: f64) -> Self {
        Self {
            box_size,
            apix,
            resolution: 2.0 * apix,
        }
    }

    /// Standard deviation σ of each atom's Gaussian, in Å: 0.225 · resolution.
    pub fn sigma(&self) -> f64 {
        SIGMA_PER_RESOLUTION * self.resolution
    }

    fn validate(&self) -> Result<(), SynthError> {
        let n = self.box_size;
        if n < 2 || !n.is_multiple_of(2) {
            return Err(SynthError::Parameter {
                name: "box size (voxels)",
                value: n as f64,
                expected: "an even number of at least 2",
            });
        }
        for (name, value) in [
            ("voxel size (Å)", self.apix),
            ("resolution (Å)", self.resolution),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(SynthError::Parameter {
                    name,
                    value,
                    expected: "a finite number above 0",
                });
            }
        }
        Ok(())
    }
}

/// The density ρ (Z per Å³ at the voxel centres) of atoms given as (position in Å relative to
/// the frame origin, weight Z), on the grid of `cfg`, band-limited to the grid (no aliasing).
///
/// Fails when `cfg` is invalid or an atom's position or weight is not finite.
pub fn density_map(atoms: &[([f64; 3], f64)], cfg: &DensityConfig) -> Result<Volume, SynthError> {
    cfg.validate()?;
    if let Some((index, &(position, weight))) = atoms
        .iter()
        .enumerate()
        .find(|(_, (p, w))| !(p.iter().all(|c| c.is_finite()) && w.is_finite()))
    {
        return Err(SynthError::BadAtom {
            index,
            position,
            weight,
        });
    }
    let _span =
        tracing::debug_span!("density_map", atoms = atoms.len(), n = cfg.box_size).entered();
    let n = cfg.box_size;
    let spectrum = half_spectrum(atoms, cfg);
    let scale = 1.0 / (n as f64 * cfg.apix).powi(3);
    let voxels = inverse_fft(spectrum, n, scale);
    let volume = Volume::new(voxels.mapv(|v| v as f32), cfg.apix as f32)?;
    Ok(volume)
}

/// The origin of a molecule's frame: the heavy-atom centroid of `model` in Å (conventions: one
/// frame for all conformations, centred on the reference conformation). Fails when the model
/// has no heavy atom.
pub fn frame_origin(model: &AtomicModel) -> Result<[f64; 3], SynthError> {
    model.heavy_atom_centroid().ok_or(SynthError::NoHeavyAtoms)
}

/// Atoms per block of the spectrum accumulation: bounds the per-block tables to a few MB.
const ATOM_BLOCK: usize = 1024;

/// The centred half spectrum `F[jz][jy][jx]` (`jx` in `0..=N/2`) of the atoms' Gaussians,
/// stored as `[jz][jy][re(0..h) | im(0..h)]`.
///
/// F separates per atom into three 1D factors a_x(jx)·a_y(jy)·a_z(jz), with
/// aₓ(j) = exp(−2π²σ²k²) exp(−2πi k x), k = signed(j)/(N·apix). At the Nyquist index the factor
/// is the mean of ±N/2, g·cos(2πkx), which keeps the spectrum Hermitian and the map real. Each
/// plane `jz` is then one real matrix product: `[Pr | Pi]` (N × 2A, P = Z·a_z·a_y) times
/// `[[Xr, Xi], [−Xi, Xr]]` (2A × 2h, X = aₓ).
fn half_spectrum(atoms: &[([f64; 3], f64)], cfg: &DensityConfig) -> Array3<f64> {
    let n = cfg.box_size;
    let h = n / 2 + 1;
    let length = n as f64 * cfg.apix;
    let sigma = cfg.sigma();
    let mut spectrum = Array3::<f64>::zeros((n, n, 2 * h));
    for block in atoms.chunks(ATOM_BLOCK) {
        let a = block.len();
        let factors =
            |axis: usize, count: usize| axis_factors(block, axis, count, n, length, sigma);
        let ax = factors(0, h);
        let ay = factors(1, n);
        let az = factors(2, n);
        let mut x = Array2::<f64>::zeros((2 * a, 2 * h));
        for (i, row) in ax.outer_iter().enumerate() {
            for (j, f) in row.iter().enumerate() {
                x[[i, j]] = f.re;
                x[[i, h + j]] = f.im;
                x[[a + i, j]] = -f.im;
                x[[a + i, h + j]] = f.re;
            }
        }
        spectrum
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(jz, mut plane)| {
                let mut p = Array2::<f64>::zeros((n, 2 * a));
                for (i, &(_, z)) in block.iter().enumerate() {
                    let w = az[[i, jz]] * z;
                    for jy in 0..n {
                        let c = w * ay[[i, jy]];
                        p[[jy, i]] = c.re;
                        p[[jy, a + i]] = c.im;
                    }
                }
                general_mat_mul(1.0, &p, &x, 1.0, &mut plane);
            });
    }
    spectrum
}

/// `[atom][j]` factors g(k)·exp(−2πi k·r_axis) for FFT indices `j < count` of an `n`-point axis.
fn axis_factors(
    block: &[([f64; 3], f64)],
    axis: usize,
    count: usize,
    n: usize,
    length: f64,
    sigma: f64,
) -> Array2<Complex64> {
    let two_pi = std::f64::consts::TAU;
    let freqs: Vec<(f64, f64, bool)> = (0..count)
        .map(|j| {
            let k = signed_freq(j, n) as f64 / length;
            let g = (-0.5 * (two_pi * sigma * k).powi(2)).exp();
            (k, g, j == n / 2)
        })
        .collect();
    let mut out = Array2::<Complex64>::zeros((block.len(), count));
    for (mut row, (position, _)) in out.outer_iter_mut().zip(block) {
        let r = position[axis];
        for (f, &(k, g, nyquist)) in row.iter_mut().zip(&freqs) {
            let (sin, cos) = (two_pi * k * r).sin_cos();
            *f = if nyquist {
                Complex64::new(g * cos, 0.0)
            } else {
                Complex64::new(g * cos, -g * sin)
            };
        }
    }
    out
}

/// `scale · Σ_j F(j) exp(2πi j·(m − N/2)/N)` for every voxel m (the inverse DFT with the origin
/// at voxel N/2), from the half spectrum of [`half_spectrum`]: moved to fft3's origin at voxel 0
/// while taken into its complex layout, then [`Fft3::inverse_with`], y before z (the order the
/// maps have always been made in, which keeps them the same to the bit).
fn inverse_fft(spectrum: Array3<f64>, n: usize, scale: f64) -> Array3<f64> {
    let h = n / 2 + 1;
    let mut c = Array3::<Complex64>::zeros((n, n, h));
    Zip::indexed(&mut c).par_for_each(|(jz, jy, jx), v| {
        let sign = if centring_flips(jz, jy, jx) {
            -1.0
        } else {
            1.0
        };
        *v = Complex64::new(spectrum[[jz, jy, jx]], spectrum[[jz, jy, h + jx]]) * sign;
    });
    drop(spectrum);
    Fft3::<f64>::new(n).inverse_with(c, ColumnOrder::YThenZ, scale)
}
