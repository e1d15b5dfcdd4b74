//! The Fourier shell correlation, its resolution crossings and area, and the FSCCC matrix.
//!
//! `FSC(shell) = Re Σ F₁·conj(F₂) / √(Σ|F₁|² · Σ|F₂|²)` over the Fourier coefficients of the
//! shell, summed over the whole (Hermitian) 3D transform. Two binnings:
//!
//! - [`Binning::Standard`] (the conventions'): shell `i = 0 … N/2` holds the coefficients whose
//!   radius `|k|` in index units rounds to `i`; it is reported at `i/(N·apix)` Å⁻¹. Corners of
//!   the cube beyond radius `N/2 + ½` belong to no shell.
//! - [`Binning::CryoDrgn`] (cryoDRGN's `fsc` command and CryoBench): `N/2` points; point 0 is 1
//!   by definition, point `i` (`1 ≤ i < N/2`) is the shell of radii in `[i − 1, i)`, reported at
//!   `i/(N·apix)` Å⁻¹. Its point `i` is thus about half a shell further out than the frequency
//!   it is reported at.
//!
//! A shell where either map has no power has FSC 0 (there is nothing to correlate).

use mcg_physics::Volume;
use mcg_physics::fft3::Fft3;
use mcg_physics::fourier::signed_freq;
use ndarray::{Array2, Array3, Axis, Zip};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use crate::EvalError;

/// The FSC thresholds that are reported: 0.5 and 0.143.
pub const THRESHOLDS: [f64; 2] = [0.5, 0.143];

/// How Fourier coefficients are grouped into shells (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Binning {
    /// Shell `i` = radii rounding to `i`, `i = 0 … N/2` (RELION-like; the conventions').
    #[default]
    Standard,
    /// cryoDRGN's: point 0 = 1, point `i` = radii in `[i − 1, i)`, `i = 1 … N/2 − 1`.
    CryoDrgn,
}

impl Binning {
    /// The name the command line uses: `standard` or `cryodrgn`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::CryoDrgn => "cryodrgn",
        }
    }
}

impl std::str::FromStr for Binning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Self::Standard),
            "cryodrgn" => Ok(Self::CryoDrgn),
            other => Err(format!(
                "unknown binning {other:?}: expected standard or cryodrgn"
            )),
        }
    }
}

/// A real-space mask applied to both maps (voxel by voxel) before their transforms.
#[derive(Debug, Clone, PartialEq)]
pub enum Mask {
    /// 1 at voxels whose centre lies within `radius_a` Å of the box centre (voxel `N/2`), else 0.
    Sphere { radius_a: f64 },
    /// A (soft) mask of the maps' box, `[z][y][x]`, usually with values in [0, 1].
    Map(Array3<f32>),
}

/// The least effective voxel count a mask must keep per shell out to Nyquist: a mask of an
/// `N³` box must keep at least `16 · N/2 = 8N` voxels ([`min_mask_voxels`]; 128 at N = 16,
/// about a ball of radius 3 voxels; 512 at N = 64, radius 5), else [`fsc`] refuses it
/// ([`EvalError::MaskTooSmall`]).
///
/// Why: the masked maps hold only as many independent numbers as the mask keeps voxels, and
/// the curve spends them on its N/2 shells. With `K` numbers per shell, the FSC of unrelated
/// maps has a standard deviation of about `1/√K`; at `K = 16` that is 0.25, so the 0.5
/// threshold stands two standard deviations above chance. Below it the curve says nothing: a
/// mask of one voxel makes both spectra the same phase ramp, and the FSC is 1 in every shell
/// whatever the maps. This is a floor against degenerate masks, not a quality guarantee (a
/// real mask keeps far more).
pub const MIN_MASK_VOXELS_PER_SHELL: usize = 16;

/// The least effective voxel count ([`effective_voxels`]) accepted for a mask of an `n³` box:
/// [`MIN_MASK_VOXELS_PER_SHELL`] for each of the `n/2` shells out to Nyquist.
pub fn min_mask_voxels(n: usize) -> usize {
    MIN_MASK_VOXELS_PER_SHELL * (n / 2)
}

/// The effective number of voxels a mask keeps: `(Σ|w|)² / Σw²` (Kish's effective sample
/// size), which is the count of kept voxels for a 0/1 mask, does not change when the mask is
/// scaled (nor does the FSC), and counts a soft mask's faint voxels for little. 0 for an
/// all-zero mask.
pub fn effective_voxels(mask: &Array3<f32>) -> f64 {
    let (sum, sum_sq) = mask.iter().fold((0.0f64, 0.0f64), |(s, q), &w| {
        let w = f64::from(w);
        (s + w.abs(), q + w * w)
    });
    if sum_sq > 0.0 {
        sum * sum / sum_sq
    } else {
        0.0
    }
}

/// The settings of an FSC computation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FscConfig {
    /// Shell definition.
    pub binning: Binning,
    /// Mask applied to both maps first; `None` compares the whole boxes.
    pub mask: Option<Mask>,
}

/// An FSC curve: one point per shell, from zero frequency outwards.
#[derive(Debug, Clone, PartialEq)]
pub struct FscCurve {
    /// The binning that made the shells.
    pub binning: Binning,
    /// Box edge `N` of the maps, voxels.
    pub box_size: usize,
    /// Voxel size of the maps, Å.
    pub apix: f64,
    /// Frequency of each point, Å⁻¹: `i/(N·apix)`.
    pub frequency_per_a: Vec<f64>,
    /// The correlation of each point, in [−1, 1].
    pub fsc: Vec<f64>,
    /// Fourier coefficients of the whole 3D transform in each shell (0 for cryoDRGN's point 0,
    /// which is 1 by definition). Independent noise gives an FSC of standard deviation about
    /// `1/√voxels`.
    pub voxels: Vec<usize>,
}

/// Where an FSC curve crosses a threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    /// Frequency of the crossing, Å⁻¹.
    pub frequency_per_a: f64,
    /// Its resolution, Å: `1 / frequency_per_a`.
    pub angstrom: f64,
    /// The frequency as a fraction of Nyquist, `1/(2·apix)`.
    pub nyquist_fraction: f64,
}

impl FscCurve {
    /// The frequency of each point as a fraction of Nyquist: `i/(N/2)`.
    pub fn nyquist_fraction(&self) -> Vec<f64> {
        let nyquist = 0.5 / self.apix;
        self.frequency_per_a.iter().map(|f| f / nyquist).collect()
    }

    /// The first crossing of the curve below `threshold`, linearly interpolated between shells.
    ///
    /// The search starts at point 1: it finds the first point `i ≥ 1` with `fsc[i] < threshold`.
    /// When `fsc[i − 1] ≥ threshold` the crossing is the frequency where the straight line
    /// through points `i − 1` and `i` (FSC against frequency) meets the threshold. When point
    /// `i − 1` is itself below (only possible at `i = 1`: point 0 of the standard binning is the
    /// single zero-frequency coefficient, whose FSC is the sign of the product of the maps'
    /// means, or 0 for zero-mean maps), the crossing is point 1's frequency. `None` when no point
    /// falls below the threshold: the maps agree beyond the last shell.
    pub fn resolution(&self, threshold: f64) -> Option<Resolution> {
        let i = (1..self.fsc.len()).find(|&i| self.fsc[i] < threshold)?;
        let (f0, f1) = (self.frequency_per_a[i - 1], self.frequency_per_a[i]);
        let (c0, c1) = (self.fsc[i - 1], self.fsc[i]);
        let frequency = if c0 >= threshold {
            f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
        } else {
            f1
        };
        Some(Resolution {
            frequency_per_a: frequency,
            angstrom: 1.0 / frequency,
            nyquist_fraction: frequency * 2.0 * self.apix,
        })
    }

    /// AreaFSC: the mean FSC over points 1 … last, i.e. the area under the curve against
    /// frequency as a fraction of Nyquist (each point standing for a band of width `1/(N/2)`,
    /// a right-endpoint Riemann sum). With the standard binning the points are shells 1 … N/2
    /// and the area spans [0, 1] of Nyquist exactly (the conventions' definition; 1 for
    /// identical maps, about 0 for unrelated ones). With cryoDRGN's binning the points are
    /// 1 … N/2 − 1: the mean over them, spanning [0, 1 − 2/N] of Nyquist.
    pub fn area(&self) -> f64 {
        let points = &self.fsc[1.min(self.fsc.len())..];
        if points.is_empty() {
            return 0.0;
        }
        points.iter().sum::<f64>() / points.len() as f64
    }
}

/// The FSC of maps `a` and `b` (same box and voxel size) under `config`.
///
/// Errors name which input is at fault: different boxes or voxel sizes, a mask of another box,
/// a negative or non-finite mask radius, a mask that keeps fewer voxels than
/// [`min_mask_voxels`] ([`EvalError::MaskTooSmall`]), or non-finite voxels.
pub fn fsc(a: &Volume, b: &Volume, config: &FscConfig) -> Result<FscCurve, EvalError> {
    check_pair(a, b, "the first map", "the second map")?;
    let n = a.box_size();
    let mask = mask_array(config.mask.as_ref(), n, a.apix())?;
    let fft = Fft3::new(n);
    let fa = spectrum(&fft, a, mask.as_ref(), "the first map")?;
    let fb = spectrum(&fft, b, mask.as_ref(), "the second map")?;
    let shells = Shells::new(n, config.binning);
    let sums = shell_sums(&shells, &fa, &fb);
    Ok(curve(
        &shells,
        f64::from(a.apix()),
        &sums.cross,
        &sums.a,
        &sums.b,
        &sums.voxels,
    ))
}

/// The FSCCC matrix of a series of maps (the Multi-CryoGAN paper, eq. 7):
/// `M[m, n] = AreaFSC(maps[m], maps[n])` ([`FscCurve::area`]) for every pair, under `config`.
/// Symmetric, with 1 on the diagonal for maps with power in every shell. Each map is
/// transformed once.
pub fn fsccc(maps: &[Volume], config: &FscConfig) -> Result<Array2<f64>, EvalError> {
    let Some(first) = maps.first() else {
        return Ok(Array2::zeros((0, 0)));
    };
    for (i, map) in maps.iter().enumerate().skip(1) {
        check_pair(first, map, "map 0", &format!("map {i}"))?;
    }
    let n = first.box_size();
    let apix = f64::from(first.apix());
    let mask = mask_array(config.mask.as_ref(), n, first.apix())?;
    let fft = Fft3::new(n);
    let spectra = maps
        .iter()
        .enumerate()
        .map(|(i, map)| spectrum(&fft, map, mask.as_ref(), &format!("map {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let shells = Shells::new(n, config.binning);
    let powers: Vec<ShellSums> = spectra.iter().map(|s| shell_sums(&shells, s, s)).collect();
    let l = maps.len();
    let pairs: Vec<(usize, usize)> = (0..l).flat_map(|m| (m..l).map(move |k| (m, k))).collect();
    let areas: Vec<f64> = pairs
        .par_iter()
        .map(|&(m, k)| {
            let cross = if m == k {
                powers[m].cross.clone()
            } else {
                shell_sums(&shells, &spectra[m], &spectra[k]).cross
            };
            curve(
                &shells,
                apix,
                &cross,
                &powers[m].cross,
                &powers[k].cross,
                &powers[m].voxels,
            )
            .area()
        })
        .collect();
    let mut matrix = Array2::zeros((l, l));
    for (&(m, k), area) in pairs.iter().zip(areas) {
        matrix[[m, k]] = area;
        matrix[[k, m]] = area;
    }
    Ok(matrix)
}

/// Fails unless `a` and `b` have the same box and voxel size (to 1 part in 10⁴).
pub(crate) fn check_pair(
    a: &Volume,
    b: &Volume,
    name_a: &str,
    name_b: &str,
) -> Result<(), EvalError> {
    let what = format!("{name_a} and {name_b}");
    if a.box_size() != b.box_size() {
        let (na, nb) = (a.box_size(), b.box_size());
        return Err(EvalError::Mismatch {
            what,
            detail: format!(
                "boxes of {na}³ and {nb}³ voxels; expected the same box (resample one first)"
            ),
        });
    }
    let (pa, pb) = (f64::from(a.apix()), f64::from(b.apix()));
    if (pa - pb).abs() > 1e-4 * pa.max(pb) {
        return Err(EvalError::Mismatch {
            what,
            detail: format!("voxel sizes of {pa} Å and {pb} Å; expected the same voxel size"),
        });
    }
    Ok(())
}

/// The mask as voxel weights, or `None` for no mask; refuses a mask that keeps fewer voxels
/// than [`min_mask_voxels`].
fn mask_array(mask: Option<&Mask>, n: usize, apix: f32) -> Result<Option<Array3<f32>>, EvalError> {
    let weights = match mask {
        None => return Ok(None),
        Some(Mask::Sphere { radius_a }) => {
            if !(radius_a.is_finite() && *radius_a > 0.0) {
                return Err(EvalError::Input {
                    what: "mask radius".into(),
                    problem: format!("{radius_a} Å; expected a finite radius above 0"),
                });
            }
            let r2 = (radius_a / f64::from(apix)).powi(2);
            let c = (n / 2) as f64;
            Array3::from_shape_fn((n, n, n), |(z, y, x)| {
                let d2 = (x as f64 - c).powi(2) + (y as f64 - c).powi(2) + (z as f64 - c).powi(2);
                if d2 <= r2 { 1.0 } else { 0.0 }
            })
        }
        Some(Mask::Map(m)) => {
            if m.dim() != (n, n, n) {
                let (z, y, x) = m.dim();
                return Err(EvalError::Mismatch {
                    what: "the mask and the maps".into(),
                    detail: format!(
                        "a mask of {x}×{y}×{z} voxels for maps of {n}³; expected the maps' box"
                    ),
                });
            }
            if m.iter().any(|v| !v.is_finite()) {
                return Err(EvalError::Input {
                    what: "the mask".into(),
                    problem: "non-finite values; expected finite weights".into(),
                });
            }
            m.clone()
        }
    };
    let kept = effective_voxels(&weights);
    let needed = min_mask_voxels(n);
    if kept < needed as f64 {
        return Err(EvalError::MaskTooSmall {
            kept,
            needed,
            box_size: n,
            shells: n / 2,
        });
    }
    Ok(Some(weights))
}

/// The half spectrum of `volume` times `mask`; fails on non-finite voxels.
fn spectrum(
    fft: &Fft3<f32>,
    volume: &Volume,
    mask: Option<&Array3<f32>>,
    name: &str,
) -> Result<Array3<Complex32>, EvalError> {
    if volume.data().iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Input {
            what: name.into(),
            problem: "non-finite voxels (NaN or infinity); expected finite densities".into(),
        });
    }
    Ok(match mask {
        None => fft.forward(volume.data().view()),
        Some(mask) => {
            let mut masked = volume.data().clone();
            Zip::from(&mut masked)
                .and(mask)
                .par_for_each(|v, m| *v *= m);
            fft.forward(masked.view())
        }
    })
}

/// Which point each squared radius (index units) belongs to.
struct Shells {
    n: usize,
    binning: Binning,
    /// Points of the curve.
    points: usize,
    /// `table[r²]`: the point of squared radius `r²`, or `NONE`.
    table: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Shells {
    fn new(n: usize, binning: Binning) -> Self {
        let half = n / 2;
        let max_r2 = 3 * half * half;
        let points = match binning {
            Binning::Standard => half + 1,
            Binning::CryoDrgn => half,
        };
        let table = (0..=max_r2)
            .map(|r2| {
                let s = r2.isqrt();
                let point = match binning {
                    // √r² rounds up exactly when r² > s² + s, i.e. √r² > s + ½ (r² is an integer,
                    // so √r² is never exactly s + ½).
                    Binning::Standard => s + usize::from(r2 > s * s + s),
                    // Radii in [i − 1, i) → point i: i = ⌊√r²⌋ + 1.
                    Binning::CryoDrgn => s + 1,
                };
                if point < points { point as u32 } else { NONE }
            })
            .collect();
        Self {
            n,
            binning,
            points,
            table,
        }
    }
}

/// Per-point sums over the full 3D transform.
#[derive(Debug)]
struct ShellSums {
    /// Σ Re F_a·conj(F_b).
    cross: Vec<f64>,
    /// Σ |F_a|².
    a: Vec<f64>,
    /// Σ |F_b|².
    b: Vec<f64>,
    /// Coefficients per point.
    voxels: Vec<usize>,
}

impl ShellSums {
    fn zeros(points: usize) -> Self {
        Self {
            cross: vec![0.0; points],
            a: vec![0.0; points],
            b: vec![0.0; points],
            voxels: vec![0; points],
        }
    }

    fn add(mut self, other: Self) -> Self {
        for i in 0..self.cross.len() {
            self.cross[i] += other.cross[i];
            self.a[i] += other.a[i];
            self.b[i] += other.b[i];
            self.voxels[i] += other.voxels[i];
        }
        self
    }
}

/// Sums over the shells of two half spectra. The half spectrum holds `kx = 0 … N/2`; every
/// column but `kx = 0` and `kx = N/2` stands for itself and its conjugate mirror `−k`, which
/// adds the same real products, so it counts twice. Planes are summed in parallel and their
/// sums added in order, so the result does not depend on the thread count.
fn shell_sums(shells: &Shells, fa: &Array3<Complex32>, fb: &Array3<Complex32>) -> ShellSums {
    let n = shells.n;
    let h = n / 2 + 1;
    let planes: Vec<ShellSums> = fa
        .axis_iter(Axis(0))
        .into_par_iter()
        .zip(fb.axis_iter(Axis(0)).into_par_iter())
        .enumerate()
        .map(|(kz, (plane_a, plane_b))| {
            let mut sums = ShellSums::zeros(shells.points);
            let fz = signed_freq(kz, n);
            for ky in 0..n {
                let fy = signed_freq(ky, n);
                let base = (fz * fz + fy * fy) as usize;
                let (row_a, row_b) = (plane_a.row(ky), plane_b.row(ky));
                for (kx, (x, y)) in row_a.iter().zip(row_b.iter()).enumerate() {
                    let point = shells.table[base + kx * kx];
                    if point == NONE {
                        continue;
                    }
                    let p = point as usize;
                    let weight = if kx == 0 || kx == h - 1 { 1.0 } else { 2.0 };
                    let (xr, xi) = (f64::from(x.re), f64::from(x.im));
                    let (yr, yi) = (f64::from(y.re), f64::from(y.im));
                    sums.cross[p] += weight * (xr * yr + xi * yi);
                    sums.a[p] += weight * (xr * xr + xi * xi);
                    sums.b[p] += weight * (yr * yr + yi * yi);
                    sums.voxels[p] += weight as usize;
                }
            }
            sums
        })
        .collect();
    planes
        .into_iter()
        .fold(ShellSums::zeros(shells.points), ShellSums::add)
}

/// The curve from per-point sums.
fn curve(
    shells: &Shells,
    apix: f64,
    cross: &[f64],
    power_a: &[f64],
    power_b: &[f64],
    voxels: &[usize],
) -> FscCurve {
    let n = shells.n;
    let mut fsc: Vec<f64> = (0..shells.points)
        .map(|i| {
            let denominator = (power_a[i] * power_b[i]).sqrt();
            if denominator > 0.0 {
                (cross[i] / denominator).clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    let voxels = voxels.to_vec();
    if shells.binning == Binning::CryoDrgn {
        // Point 0 is a definition, not a shell (it holds no coefficient).
        fsc[0] = 1.0;
    }
    FscCurve {
        binning: shells.binning,
        box_size: n,
        apix,
        frequency_per_a: (0..shells.points)
            .map(|i| i as f64 / (n as f64 * apix))
            .collect(),
        fsc,
        voxels,
    }
}
